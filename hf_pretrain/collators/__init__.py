"""Data collators for the pretraining objectives; each works as a plain `collate_fn` in any script."""
