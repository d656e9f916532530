"""Models for the fine-tuning tasks, built on any checkpoint's backbone (CLM, MLM or CLM→MLM).

- token classification and extractive QA: transformers' heads (`AutoModelForTokenClassification`,
  `AutoModelForQuestionAnswering`: a linear layer on every position);
- sequence classification: `MeanPoolingClassifier`, a linear layer on the mean of the last hidden states, as in
  arXiv 2507.00994 (transformers' `LlamaForSequenceClassification` pools the last token instead);
- retrieval: `BiEncoder`, mean-pooled embeddings trained with InfoNCE and in-batch negatives (`info_nce_loss`).

Attention follows the checkpoint by default: a masked-LM checkpoint (`config.is_causal: false`) runs bidirectional
and a causal-LM one causal, as in the study; `attention="bidirectional"` or `"causal"` overrides it. With
`lora_rank`, a LoRA adapter (peft) is added to the backbone only and the task head trains in full.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering, AutoModelForTokenClassification
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput

from hf_pretrain.losses import info_nce_loss, mean_pool
from hf_pretrain.model_families import decoder_equivalent
from hf_pretrain.modeling_masked_llama import set_bidirectional

ATTENTION_MODES = ("auto", "causal", "bidirectional")


class MeanPoolingClassifier(nn.Module):
    """A linear classifier on the mean-pooled last hidden states of `backbone` (any `AutoModel`)."""

    def __init__(self, backbone: nn.Module, num_labels: int):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.head = nn.Linear(backbone.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask=None, labels=None):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        logits = self.head(mean_pool(hidden, attention_mask))  # (B, C)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class BiEncoder(nn.Module):
    """Mean-pooled embeddings of queries and documents, trained with InfoNCE over in-batch negatives.

    `forward` takes the batches of `DataCollatorForContrastive` (`query_*`, `positive_*`, optional `negative_*`
    and `duplicates`), so the pair `BiEncoder` + collator trains an embedding model in any loop or in
    `transformers.Trainer` (with `remove_unused_columns=False`: the collator reads `input_ids` columns the model
    signature does not name).

    >>> from transformers import LlamaConfig, LlamaModel
    >>> backbone = LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                                   num_attention_heads=2, num_key_value_heads=2))
    >>> ids, mask = torch.randint(0, 32, (3, 5)), torch.ones(3, 5, dtype=torch.long)
    >>> out = BiEncoder(backbone)(query_input_ids=ids, query_attention_mask=mask,
    ...                           positive_input_ids=ids.flip(1), positive_attention_mask=mask)
    >>> tuple(out.query_embeddings.shape), bool(out.loss > 0)
    ((3, 16), True)
    """

    def __init__(self, backbone: nn.Module, temperature: float = 0.05):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.temperature = temperature

    def encode(self, input_ids, attention_mask=None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)  # (B, H)

    def forward(
        self,
        query_input_ids,
        query_attention_mask,
        positive_input_ids,
        positive_attention_mask,
        negative_input_ids=None,
        negative_attention_mask=None,
        duplicates=None,
    ):
        queries = self.encode(query_input_ids, query_attention_mask)
        documents = self.encode(positive_input_ids, positive_attention_mask)
        if negative_input_ids is not None:
            documents = torch.cat([documents, self.encode(negative_input_ids, negative_attention_mask)])
        loss = info_nce_loss(queries, documents, self.temperature, duplicates=duplicates)
        return ModelOutput(loss=loss, query_embeddings=queries, document_embeddings=documents)


def is_masked_lm(config) -> bool:
    """True for a checkpoint trained (last) with masked LM: `is_causal: false` (our Llama masked LM, or CLM→MLM after
    its switch), or, when the config does not say, a `*ForMaskedLM` architecture (BERT-style encoders)."""
    is_causal = getattr(config, "is_causal", None)
    if is_causal is not None:
        return is_causal is False
    return any(name.endswith("ForMaskedLM") for name in getattr(config, "architectures", None) or [])


@contextmanager
def quiet_loading():
    """New heads are expected ("Some weights ... newly initialized"): keep hundreds of runs' logs readable."""
    level, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.logging.enable_progress_bar()


def load_task_model(
    kind: str,
    name_or_path: str,
    num_labels: int = 2,
    attention: str = "auto",
    revision: str | None = None,
    lora_rank: int | None = None,
    lora_alpha: float = 32.0,
    temperature: float = 0.05,
) -> nn.Module:
    """The model for task type `kind` (sc, tc, qa, ir) on the checkpoint's backbone; the head is freshly initialised
    from the global RNG (call `transformers.set_seed` first for a seeded run)."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}.")
    if kind not in ("sc", "tc", "qa", "ir"):
        raise ValueError(f"task type must be one of sc, tc, qa, ir, got {kind!r}.")
    config = AutoConfig.from_pretrained(name_or_path, revision=revision, num_labels=num_labels)
    head_class = {"tc": AutoModelForTokenClassification, "qa": AutoModelForQuestionAnswering}.get(kind)
    if head_class is not None and type(config) not in head_class._model_mapping and decoder_equivalent(config):
        # e.g. QA on a EuroBERT checkpoint: transformers has no EuroBERT QA head, but its backbone is a Llama's
        # (same weights), and Llama has one. The bidirectional attention comes with it.
        config = decoder_equivalent(config)
        config.is_causal = False
    bidirectional = is_masked_lm(config) if attention == "auto" else attention == "bidirectional"
    with quiet_loading():
        backbone = AutoModel.from_pretrained(name_or_path, config=config, revision=revision)
    if head_class is not None:
        # transformers' head on the checkpoint's backbone. Built from the config and given the loaded backbone, not
        # loaded with from_pretrained: LlamaForQuestionAnswering names its backbone `transformer`, so the `model.*`
        # weights of a CLM or MLM checkpoint would silently not load into it.
        model = head_class.from_config(config)
        backbone_name = model.base_model_prefix
        setattr(model, backbone_name, backbone)
    else:
        model = MeanPoolingClassifier(backbone, num_labels) if kind == "sc" else BiEncoder(backbone, temperature)
        backbone_name = "backbone"
    if attention != "auto" or backbone.config.model_type == "llama":
        set_bidirectional(backbone, bidirectional)  # also flips the attention modules' own `is_causal` flags
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        adapter = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules="all-linear", lora_dropout=0.0)
        setattr(model, backbone_name, get_peft_model(backbone, adapter))  # freezes the backbone; the head trains
    return model
