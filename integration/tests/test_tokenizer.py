"""Byte-level BPE: exact round trips, and the cached/AutoTokenizer reloads encode identically."""

from __future__ import annotations

from transformers import AutoTokenizer

from layerwise.data import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, load_corpus, load_tokenizer

ODD_TEXT = "naïve café — 東京 🎭\n\tTABS  and  double  spaces\r\n<|endoftext|> is text here"


def test_round_trip_and_reload(small_data, layerwise_cache):
    tokenizer = small_data.tokenizer
    assert len(tokenizer) == 512
    assert {tokenizer.eos_token, tokenizer.pad_token, tokenizer.mask_token} == {
        EOS_TOKEN,
        PAD_TOKEN,
        MASK_TOKEN,
    }
    held_out = small_data.corpus.splits["validation"][0]["text"][:20_000]  # never trained on
    for text in (held_out, ODD_TEXT, ""):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    # merges make tokens longer than single bytes on held-out English, even at vocabulary 512
    assert len(held_out.encode()) / len(tokenizer.encode(held_out, add_special_tokens=False)) > 1.5

    def entries():  # other tests (README blocks, progress) may cache tokenizers of other corpora
        return sorted(f for f in (layerwise_cache / "tokenizers").iterdir() if f.is_dir())

    before = entries()
    corpus = load_corpus("shakespeare", max_documents=20)
    cached = load_tokenizer("bpe", corpus, 512)
    assert entries() == before  # reused from the cache, not trained again
    assert cached.name_or_path == tokenizer.name_or_path
    auto = AutoTokenizer.from_pretrained(cached.name_or_path)
    for other in (cached, auto):
        assert other.get_vocab() == tokenizer.get_vocab()
        assert other.encode(held_out + ODD_TEXT) == tokenizer.encode(held_out + ODD_TEXT)
        assert other.eos_token_id == tokenizer.eos_token_id
        assert other.mask_token_id == tokenizer.mask_token_id


def test_vocab_size_keys_the_cache(shakespeare, tmp_path):
    corpus = load_corpus("shakespeare", max_documents=4)
    small = load_tokenizer("bpe", corpus, 300, cache=tmp_path)
    larger = load_tokenizer("bpe", corpus, 400, cache=tmp_path)
    assert (len(small), len(larger)) == (300, 400)
    assert small.name_or_path != larger.name_or_path
