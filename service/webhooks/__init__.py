"""Webhooks (docs/api.md Jobs): a job's ``webhook`` gets a signed POST for each subscribed status
change, retried with backoff, every attempt logged under the job.

- :mod:`.subscriptions` — the job's subscription, stored with the job at submission.
- :mod:`.addresses` — which URLs may be called (http(s) only; private addresses per setting).
- :mod:`.signing` — the owners' secrets and the Standard Webhooks signature.
- :mod:`.outbox` — status changes become delivery rows (the outbox); attempts and backoff.
- :mod:`.sender` — the API process's thread that plans and sends deliveries.

Status changes are read from the job rows themselves (``started_at``, terminal ``status``),
whoever wrote them (the API, a worker, the reaper), so no writer has to remember webhooks,
and a change made while no API process was up is delivered once one is."""
