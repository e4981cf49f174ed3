"""Task heads on the backbone: sequence classification, multiple choice, token classification, question answering."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss

from ..config import XLMRobertaXLConfig
from ..outputs import (
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .backbone import XLMRobertaXLModel
from .base import XLMRobertaXLPreTrainedModel, backbone_tail, nested_model
from .layers import XLMRobertaXLClassificationHead


class XLMRobertaXLForSequenceClassification(XLMRobertaXLPreTrainedModel):
    """Backbone (no pooler) + classification head on <s>; MSE / CE / BCE by ``problem_type`` (inferred if None)."""

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        with nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.classifier = XLMRobertaXLClassificationHead(self.config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | SequenceClassifierOutput:
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            reads_first=True,  # the head reads <s>: a left-padded batch takes the exact path
        )
        logits = self.classifier(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = _sequence_classification_loss(self.config, self.num_labels, logits, labels)
        if not return_dict:
            out = (logits,) + backbone_tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def _sequence_classification_loss(
    config: XLMRobertaXLConfig, num_labels: int, logits: torch.Tensor, labels: torch.Tensor | None
):
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and (labels.dtype == torch.long or labels.dtype == torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return MSELoss()(logits.squeeze(), labels.squeeze())
        return MSELoss()(logits, labels)
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels)


class XLMRobertaXLForMultipleChoice(XLMRobertaXLPreTrainedModel):
    """Backbone with pooler, per choice; (B, C, S) inputs are flattened to (B*C, S); logits (B, C)."""

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__(config)
        with nested_model():
            self.roberta = XLMRobertaXLModel(self.config)
        self.dropout = nn.Dropout(self.config.hidden_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | MultipleChoiceModelOutput:
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        num_choices = input_ids.shape[1] if input_ids is not None else inputs_embeds.shape[1]

        def flat(t: torch.Tensor):
            return t.reshape(-1, t.size(-1)) if t is not None else None

        flat_embeds = (
            inputs_embeds.reshape(-1, inputs_embeds.size(-2), inputs_embeds.size(-1))
            if inputs_embeds is not None
            else None
        )
        outputs = self.roberta(
            flat(input_ids),
            position_ids=flat(position_ids),
            token_type_ids=flat(token_type_ids),
            attention_mask=flat(attention_mask),
            head_mask=head_mask,
            inputs_embeds=flat_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            reads_first=True,  # the pooler reads <s>: a left-padded batch takes the exact path
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        reshaped = logits.view(-1, num_choices)
        loss = CrossEntropyLoss()(reshaped, labels) if labels is not None else None
        if not return_dict:
            out = (reshaped,) + backbone_tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return MultipleChoiceModelOutput(
            loss=loss, logits=reshaped, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XLMRobertaXLForTokenClassification(XLMRobertaXLPreTrainedModel):
    """Backbone (no pooler) + dropout + linear per token; CE loss ignoring positions where attention_mask != 1."""

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        with nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        c = self.config
        self.dropout = nn.Dropout(c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob)
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | TokenClassifierOutput:
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss_fct = CrossEntropyLoss()
            if attention_mask is not None:
                active = attention_mask.view(-1) == 1
                active_labels = torch.where(
                    active, labels.view(-1), torch.tensor(loss_fct.ignore_index).type_as(labels)
                )
                loss = loss_fct(logits.view(-1, self.num_labels), active_labels)
            else:
                loss = loss_fct(logits.view(-1, self.num_labels), labels.view(-1))
        if not return_dict:
            out = (logits,) + backbone_tail(outputs)
            return ((loss,) + out) if loss is not None else out
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class XLMRobertaXLForQuestionAnswering(XLMRobertaXLPreTrainedModel):
    """Backbone (no pooler) + ``qa_outputs`` (start/end logits); loss = mean of start and end CE."""

    def __init__(self, config: XLMRobertaXLConfig | dict) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        with nested_model():
            self.roberta = XLMRobertaXLModel(self.config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | list | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> tuple | QuestionAnsweringModelOutput:
        _, _, return_dict = self._flags(output_attentions, output_hidden_states, return_dict)
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            # the start/end softmax runs over every position, padded ones included: the exact path computes them
            padded_loss="the question-answering loss (its softmax covers padded positions)"
            if start_positions is not None and end_positions is not None
            else None,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits = start_logits.squeeze(-1).contiguous()
        end_logits = end_logits.squeeze(-1).contiguous()
        total_loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss_fct = CrossEntropyLoss(ignore_index=ignored)
            total_loss = (loss_fct(start_logits, start_positions) + loss_fct(end_logits, end_positions)) / 2
        if not return_dict:
            out = (start_logits, end_logits) + backbone_tail(outputs)
            return ((total_loss,) + out) if total_loss is not None else out
        return QuestionAnsweringModelOutput(
            loss=total_loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
