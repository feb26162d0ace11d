"""Cost accounting: micro-USD from registry prices and the unified usage counts."""

import pytest

from bitrouter import registry
from bitrouter.metrics import cost_micro_usd
from bitrouter.protocols import Usage

PRICES = {"input": 3.0, "cache_read": 0.3, "cache_write": 3.75, "output": 15.0, "reasoning": 20.0}


@pytest.mark.parametrize("usage, pricing, micro", [
    (Usage(input=1000, output=500), {"input": 2.5, "output": 10.0}, 7500),  # the reference's example
    (Usage(input=1000, cache_read=600, cache_write=100, output=0), PRICES, 300 * 3 + 600 * 0.3 + 100 * 3.75),
    (Usage(input=0, output=100, reasoning=40), PRICES, 60 * 15 + 40 * 20),
    (Usage(input=100, cache_read=100), {"input": 2.0}, 200),  # unknown cache price: billed as input
    (Usage(output=10, reasoning=10), {"output": 4.0}, 40),  # unknown reasoning price: billed as output
    (Usage(input=1, output=1), {"input": 0.15, "output": 0.6}, 1),  # 0.75 micro-USD rounds up
    (Usage(input=10 ** 6, output=10 ** 6), {}, 0),  # no prices known: free
])
def test_cost_rules(usage, pricing, micro):
    assert cost_micro_usd(usage, pricing) == round(micro + 0.4999)


def test_registry_prices_feed_the_formula():
    pricing = registry.model_info("openai", "gpt-4o")["pricing"]
    assert cost_micro_usd(Usage(input=1000, output=500), pricing) == 7500
