"""Losses for embedding models: mean pooling and InfoNCE with in-batch negatives.

Used by the retrieval task of the fine-tuning protocol (`hf_pretrain.evaluation.encoders.BiEncoder`) and by any
contrastive pretraining of an embedding model (pairs from `DataCollatorForContrastive`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of the hidden states (B, T, H) over the real tokens (attention_mask == 1) of each row: (B, H).

    >>> mean_pool(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    if attention_mask is None:
        return hidden_states.mean(1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def info_nce_loss(
    queries: torch.Tensor,
    documents: torch.Tensor,
    temperature: float = 0.05,
    positive_index: torch.Tensor | None = None,
    duplicates: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives: each query's positive among every document of the batch.

    queries: (B, H). documents: (N, H), N >= B; by default query i's positive is document i, and the other N - 1
    documents (the other queries' positives, then any hard negatives appended after them) are its negatives.
    Similarities are cosine / `temperature`; the loss is the mean cross-entropy over queries.

    positive_index: (B,) the positive's row in `documents`, when it is not the diagonal.
    duplicates: (B, N) bool, True where a document is another copy of the query's positive (the same text twice in
        a batch): those are removed from the negatives instead of being pushed away.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(info_nce_loss(q, q, temperature=1.0).item(), 4)  # log(1 + e^-1): cos 1 vs cos 0
    0.3133
    """
    if queries.dim() != 2 or documents.dim() != 2 or documents.shape[0] < queries.shape[0]:
        raise ValueError(
            f"queries (B, H) and documents (N >= B, H) expected, got {tuple(queries.shape)}, {tuple(documents.shape)}."
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(documents.float(), dim=-1).T / temperature  # (B, N)
    if positive_index is None:
        positive_index = torch.arange(queries.shape[0], device=queries.device)
    if duplicates is not None:
        own = F.one_hot(positive_index, documents.shape[0]).bool()
        logits = logits.masked_fill(duplicates.to(logits.device) & ~own, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, positive_index)
