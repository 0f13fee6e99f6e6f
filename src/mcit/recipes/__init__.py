"""Training recipes that are not the continual loop: how the built-in tiny model's base
(the analogue of LLaVA's pretraining) is made. `models/` only builds and loads models."""
