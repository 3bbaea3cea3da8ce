"""The suite's own helpers (helpers.py)."""

import pytest
from helpers import assert_same_tokens


def test_two_long_token_lists_that_differ_fail_at_once_with_where():
    tokens = list(range(50_000))  # pytest's own diff of these two takes minutes in CI
    wrong = tokens[:30_000] + [-t for t in tokens[30_000:]]
    expected = r"50000 and 50000 tokens, first different at token 30000: "
    expected += (
        r"\[29998, 29999, -30000, -30001, -30002\] != \[29998, 29999, 30000, 30001, 30002\]$"
    )
    with pytest.raises(pytest.fail.Exception, match=expected):
        assert_same_tokens(wrong, tokens)
    with pytest.raises(
        pytest.fail.Exception,
        match=r"^3 and 2 tokens, first different at token 2: \[0, 1, 2\] != \[0, 1\]$",
    ):
        assert_same_tokens([0, 1, 2], [0, 1])
    assert_same_tokens(tokens, list(tokens))
