"""The FineTuneJob API and its rules, shared by both planes (pydantic only).

- `finetunejob`: the cluster API (spec, status), from which the CRD is generated.
- `stage_config`: the config every stage of the data plane reads (config.json), which the
  spec embeds section by section.
- `rules`: the one table of cross-field rules, enforced by pydantic and, as CEL, by the API
  server; `field_errors` formats either kind of error as `field: message`.
- `presets`, `results`, `errors`: the model catalogue, the typed result files and report
  figures the stages write, and the user-error types both planes raise.
"""
