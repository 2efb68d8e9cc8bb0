"""The bodies the OpenAI fine-tuning API accepts, checked field by field.

Unknown fields are refused by name rather than ignored: a client that asks for something
maap does not do (a DPO method, an integration) learns it at once, not after training.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Auto = Literal["auto"]
SUFFIX_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto = Field(default="auto", description="Passes over the training file.")
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = Field(
        default="auto", description="Scales maap's default learning rate (2e-4 for LoRA)."
    )

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1000:
            raise ValueError("must be 'auto' or an integer from 1 to 1000")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_float(cls, value: float | str) -> float | str:
        if isinstance(value, float | int) and not 0 < value <= 100:
            raise ValueError("must be 'auto' or a number above 0 and at most 100")
        return value


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"] = Field(
        description="maap fine-tunes with supervised rows (dpo and reinforcement are not offered)."
    )
    supervised: Supervised = Field(default_factory=Supervised)


class CreateFineTuningJob(BaseModel):
    """POST /v1/fine_tuning/jobs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=128)
    validation_file: str | None = Field(default=None, min_length=1, max_length=128)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(
        default=None,
        pattern=SUFFIX_PATTERN,
        description="Up to 40 letters, digits, '-' or '_', added to fine_tuned_model.",
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None
    # maap's own settings (the openai client's extra_body): FineTuneJob spec sections
    # merged over the gateway's defaults, e.g. {"method": {"type": "qlora"}}.
    maap: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError(f"at most 16 keys, got {len(value)}")
        for key, item in value.items():
            if not 1 <= len(key) <= 64:
                raise ValueError(f"key {key[:70]!r}: keys are 1 to 64 characters")
            if len(item) > 512:
                raise ValueError(f"value of {key!r}: values are at most 512 characters")
        return value

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError(
                "maap has no integrations; training metrics are in the job's events and "
                "checkpoints, and in the FineTuneJob's status"
            )
        return value

    def chosen_hyperparameters(self) -> Hyperparameters:
        """method.supervised.hyperparameters, or the older top-level field."""
        if self.method is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()
