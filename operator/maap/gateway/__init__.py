"""The MaaS layer: the OpenAI fine-tuning API and one inference endpoint over FineTuneJobs.

`maap gateway` runs it over a cluster (jobs are FineTuneJobs the operator runs);
`maap gateway --local` over the local runner on one machine. Both share the routes, the
OpenAI object mapping and the inference router; only the job backend differs.
"""
