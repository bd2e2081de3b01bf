"""Static vectors distilled from the encoder: the same token ids as the tokenizer, cached distillation."""

from __future__ import annotations

import numpy as np
import pytest

from distillery import static
from distillery.encoder import Encoder

TEXTS = [
    "PSTricks draws with PostScript; TikZ with PGF.",
    "hermann bode∗ 08. april 1992 — ΑΥΛΟΣ αυλός Ελληνικά",
    "snake_case, CamelCase, x^2+y^2=z^2 <tag> {braces} [brackets] `code` ~tilde| 100% $5",
    "Straße café naïve résumé Ångström 東京大学 日本語の文書 한국어",
    "control\x07chars\ttabs\nnewlines\r\nand  double  spaces",
    "",
    "   ",
    "emoji 🙂 ligature ﬁnal ﬂow ellipsis… quotes “curly” ‘single’ «guillemets»",
]


@pytest.fixture
def static_model(tiny_encoder_dir, distillery_home) -> static.StaticModel:
    return static.StaticModel(static.distilled(Encoder(str(tiny_encoder_dir))))


def test_word_by_word_ids_equal_the_tokenizers_ids_on_the_whole_text(static_model):
    for text in TEXTS * 2:  # the second pass reads every word from the cache
        whole = static_model.tokenizer.encode(text, add_special_tokens=False).ids
        assert static_model.token_ids(text) == whole, text


def test_a_text_is_the_normalised_mean_of_its_tokens_vectors_and_an_empty_one_is_zeros(static_model):
    rows = static_model.encode(["fonts and typefaces", "", "fonts and typefaces fonts and typefaces"])
    ids = static_model.token_ids("fonts and typefaces")
    mean = static_model.vectors[ids].mean(axis=0)
    assert np.allclose(rows[0], mean / np.linalg.norm(mean), atol=1e-5)
    assert np.allclose(rows[1], 0) and np.allclose(rows[2], rows[0], atol=1e-5)  # shares, not counts


def test_the_distillation_runs_once_per_encoder_then_is_read_from_the_cache(tiny_encoder_dir, distillery_home,
                                                                            monkeypatch):
    encoder = Encoder(str(tiny_encoder_dir))
    folder = static.distilled(encoder)
    vectors = np.load(folder / static.VECTORS)
    assert vectors.shape[0] == static.StaticModel(folder).tokenizer.get_vocab_size() and np.isfinite(vectors).all()
    assert vectors.shape[1] == 32  # PCA to 256 dims, capped by the tiny encoder's 32
    monkeypatch.setattr(static, "distill", lambda *a, **k: pytest.fail("distilled twice"))
    assert static.distilled(encoder) == folder
