"""The offline provider joins the ModelProvider contract.

Kept beside the contract rather than in it while others edit that file; moving this class into
``test_model_provider_contract.py`` (and adding its name to
``test_every_provider_joins_the_contract``) is the intended end state.

Offline replies follow from the request by rules, never from a script, so the three contract
tests that feed the provider given contents are replaced here by what they check for a
rule-based provider: costs and a labelled model, a reply per request, structured output that
validates into the purpose's decision model.
"""

from __future__ import annotations

import pytest
from test_model_provider_contract import Answering, ModelProviderContract, request

from agentledger.actors import decisions as d
from agentledger.actors.models import ModelProvider, ModelReply
from agentledger.actors.offline import OfflineProvider

REVIEW_PROMPT = (
    d.Prompt()
    .add(d.SUB_GOAL, "write report.md")
    .add(d.RESULT, "wrote report.md")
    .add(d.CHECKS, "- PASS: report.md exists")
    .text()
)


class TestOfflineProvider(ModelProviderContract):
    @pytest.fixture
    def answering(self) -> Answering:
        # The contents are ignored: see the module docstring for the tests that need them.
        return lambda contents: OfflineProvider()

    @pytest.fixture
    def failing(self) -> ModelProvider:
        # The contract's request is a bare "Review the change." with no ## sections: the rules
        # cannot review without a sub-goal, and say so with a ModelError on every such call.
        return OfflineProvider()

    def test_reply_has_content_model_and_non_negative_costs(self, answering: Answering) -> None:
        reply = answering([]).complete(request(REVIEW_PROMPT))
        assert isinstance(reply, ModelReply)
        assert reply.content
        assert reply.model == "offline-rules"
        assert reply.input_tokens > 0
        assert reply.output_tokens > 0
        assert reply.latency_ms >= 0

    def test_replies_come_in_order(self, answering: Answering) -> None:
        provider = answering([])
        rejected = REVIEW_PROMPT.replace("PASS", "FAIL")
        replies = [provider.complete(request(p)).content for p in (REVIEW_PROMPT, rejected)]
        assert [d.Verdict.model_validate_json(r).accepted for r in replies] == [True, False]

    def test_structured_reply_validates_into_the_model(self, answering: Answering) -> None:
        schema = d.answer_schema("review")
        reply = answering([]).complete(request(REVIEW_PROMPT, response_schema=schema))
        assert d.Verdict.model_validate_json(reply.content).accepted
