"""Datasets: the IOI generator (single-token filtering per tokenizer, roles) and upload parsing."""
import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from patchcore.datasets import DatasetError, for_sweep, length_groups
from patchcore.ioi import ROLE_ORDER, generate_ioi, ioi_roles, ioi_vocabulary, load_ioi_material, role_order
from patchcore.uploads import parse_upload
from patchcore.prompts import PromptPair

SMALL_NAMES = ["John", "Mary", "Paul", "Sarah", "David", "James", "Laura"]


@pytest.fixture(scope="module")
def small_tok():
    """A byte-level BPE tokenizer (GPT-2 style, with a BOS token) trained here on a few sentences:
    only SMALL_NAMES, the places and the objects become single tokens with their leading space."""
    m = load_ioi_material()
    text = " ".join(SMALL_NAMES + m["places"] + m["objects"])
    corpus = [t.replace("[A]", "John").replace("[B]", "Mary").replace("[PLACE]", "store")
              .replace("[OBJECT]", "ring") for t in m["templates_baba"]] + [text] * 5
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tk.train_from_iterator(corpus * 3, trainers.BpeTrainer(
        vocab_size=5000, min_frequency=1, special_tokens=["<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>")


def _names_in(ds):
    out = set()
    for it in ds.items:
        out |= {it.meta["IO"], it.meta["S"]} | set(it.meta.get("corrupted_names", []))
    return out


def test_single_token_filter_depends_on_the_tokenizer(tokenizer, small_tok):
    emb = ioi_vocabulary(tokenizer)
    small = ioi_vocabulary(small_tok)
    # the constructed tokenizer keeps exactly the names it was trained on
    assert sorted(small["names"]) == sorted(n for n in SMALL_NAMES if n in load_ioi_material()["names"])
    # the embedded SmolLM2 tokenizer splits some names (measured: ' Brandon', ' Megan', ...)
    assert "Brandon" in emb["dropped_names"] and "Megan" in emb["dropped_names"]
    assert "Michael" in emb["names"] and "Michael" in small["dropped_names"]
    for tok, vocab in ((tokenizer, emb), (small_tok, small)):
        for name in vocab["names"]:
            assert len(tok(" " + name, add_special_tokens=False)["input_ids"]) == 1
        for name in vocab["dropped_names"]:
            assert len(tok(" " + name, add_special_tokens=False)["input_ids"]) > 1
    ds = generate_ioi(small_tok, 12, seed=3)
    assert _names_in(ds) <= set(small["names"])
    assert any("not a single token" in n for n in ds.notes)
    ds_emb = generate_ioi(tokenizer, 40, seed=3)
    assert _names_in(ds_emb) <= set(emb["names"])
    assert not _names_in(ds_emb) & set(emb["dropped_names"])


@pytest.mark.parametrize("which", ["embedded", "small"])
def test_roles_point_at_the_names(tokenizer, small_tok, which):
    tok = tokenizer if which == "embedded" else small_tok
    ds = generate_ioi(tok, 16, seed=1)
    orders = {it.meta["order"] for it in ds.items}
    assert orders == {"BABA", "ABBA"}
    for it in ds.items:
        ids = tok(it.pair.clean)["input_ids"]
        toks = [tok.decode([i]) for i in ids]
        assert len(it.roles) == len(ids) == it.n_tokens
        assert it.roles[-1] == "END" and toks[-1] == " to"
        assert [r for r in it.roles if r in ("S1", "IO", "S2")].count("S2") == 1
        pos = {r: it.roles.index(r) for r in ("S1", "IO", "S2")}
        assert toks[pos["IO"]] == " " + it.meta["IO"] == it.pair.answer
        assert toks[pos["S1"]] == toks[pos["S2"]] == " " + it.meta["S"] == it.pair.wrong
        first = "S1" if it.meta["order"] == "BABA" else "IO"
        assert it.roles.index(first) < it.roles.index("and") < pos["S2"]
        assert it.roles[0] == "start"
    assert role_order([it.roles for it in ds.items]) == ROLE_ORDER


def test_roles_without_offsets_match(small_tok):
    """A tokenizer without offset mapping (slow tokenizers) finds the same roles by prefix lengths."""
    class NoOffsets:
        def __init__(self, tok):
            self.tok = tok

        def __call__(self, text, **kw):
            if kw.get("return_offsets_mapping"):
                raise NotImplementedError("no offsets")
            return self.tok(text, **kw)

        def decode(self, ids):
            return self.tok.decode(ids)
    ds = generate_ioi(small_tok, 6, seed=2)
    plain = NoOffsets(small_tok)
    for it in ds.items:
        ids = small_tok(it.pair.clean)["input_ids"]
        m = it.meta
        clean = it.pair.clean
        # rebuild the name spans from the text: S1/IO are the first two names, S2 the last
        first, second = (m["S"], m["IO"]) if m["order"] == "BABA" else (m["IO"], m["S"])
        a = clean.index(" " + first + " ") + 1
        b = clean.index(" " + second + " ", a + len(first)) + 1
        c = clean.rindex(" " + m["S"] + " ") + 1
        spans = [("S1" if first == m["S"] else "IO", a, a + len(first)),
                 ("IO" if first == m["S"] else "S1", b, b + len(second)), ("S2", c, c + len(m["S"]))]
        assert ioi_roles(plain, clean, ids, spans) == it.roles


def test_generator_is_repeatable_and_corruptions(tokenizer):
    a = generate_ioi(tokenizer, 10, seed=7)
    b = generate_ioi(tokenizer, 10, seed=7)
    c = generate_ioi(tokenizer, 10, seed=8)
    assert a.pairs == b.pairs and a.pairs != c.pairs
    for it in a.items:  # swap: S2 becomes the IO name, nothing else changes
        p = it.pair
        assert p.corrupted == p.clean[:p.clean.rindex(p.wrong)] + p.answer + p.clean[p.clean.rindex(p.wrong) + len(p.wrong):]
    abc = generate_ioi(tokenizer, 10, seed=7, corruption="abc")
    for it in abc.items:
        new = it.meta["corrupted_names"]
        assert len(set(new)) == 3 and not set(new) & {it.meta["IO"], it.meta["S"]}
        assert it.meta["IO"] not in it.pair.corrupted and it.meta["S"] not in it.pair.corrupted
        assert all(n in it.pair.corrupted for n in new)
    baba = generate_ioi(tokenizer, 6, seed=0, templates="baba")
    assert {it.meta["order"] for it in baba.items} == {"BABA"}
    with pytest.raises(DatasetError, match="Unknown corruption"):
        generate_ioi(tokenizer, 3, corruption="nope")
    with pytest.raises(DatasetError, match="at least 1"):
        generate_ioi(tokenizer, 0)


def test_too_few_single_token_names_is_a_clear_error(small_tok):
    m = dict(load_ioi_material())
    m["names"] = ["Christopher", "Jessica", "John"]  # only John is one token for small_tok
    with pytest.raises(DatasetError, match="single token"):
        generate_ioi(small_tok, 4, material=m)


# ------------------------------------------------------------------------- uploads
GOOD = ('"After John and Mary went to the store, Mary gave a bottle of milk to",'
        '"After John and Mary went to the store, John gave a bottle of milk to"," John"," Mary"')


def test_csv_rows_rejected_with_line_and_reason_good_rows_kept(tokenizer):
    text = "\n".join([
        "clean,corrupted,answer,wrong",                                  # line 1
        GOOD,                                                            # 2 ok
        '"x, y",z,John',                                                 # 3 too few fields
        '"The cat sat on the","The dog sat on the"," mat"," rug"',       # 4 ok
        '"A cat\nsat on the","A dog\nsat on the"," mat"," rug"',          # 5-7: ok, one record on three lines
        '"",corrupted text," John"," Mary"',                             # 8 empty clean
        '"When Tom met Anna, Tom said hi to","When Tom met Anna, Anna said hi to"," Johnathanson"," Mary"',
        '"When Tom met Anna, Tom said hi to","When Tom met Anna, Anna said hi to"," Mary"," Mary"',  # 10
        '"When Tom met Anna, Tom said hi to","When Tom met Anna and Bob, Anna said hi to"," Tom"," Anna"',
        GOOD,                                                            # 12 duplicate of line 2
        "a,b,c,d,e",                                                     # 13 too many fields
        "",                                                              # 14 blank: skipped
    ])
    ds = parse_upload(text, "pairs.csv", tokenizer)
    assert [it.line for it in ds.items] == [2, 4, 5]
    rej = {r.line: r.reason for r in ds.rejected}
    assert set(rej) == {3, 8, 9, 10, 11, 12, 13}
    assert "3 fields" in rej[3] and "quote" in rej[3]
    assert "empty" in rej[8]
    assert "exactly one token" in rej[9]
    assert "same token" in rej[10]
    assert "different lengths" in rej[11]
    assert "repeats the pair on line 2" in rej[12]
    assert "5 fields" in rej[13]
    assert ds.items[1].pair == PromptPair("The cat sat on the", "The dog sat on the", " mat", " rug")
    assert ds.items[2].pair.clean == "A cat\nsat on the"


def test_csv_header_errors(tokenizer):
    with pytest.raises(DatasetError, match="missing the columns answer, wrong"):
        parse_upload("clean,corrupted\na,b\n", "p.csv", tokenizer)
    with pytest.raises(DatasetError, match="empty"):
        parse_upload("   \n", "p.csv")
    with pytest.raises(DatasetError, match="not UTF-8"):
        parse_upload(b"clean,corrupted,answer,wrong\n\xff\xfe,b,c,d\n", "p.csv")
    # columns in any order, any case, extra columns ignored, BOM accepted
    ds = parse_upload(("\ufeffWrong,note,Answer,CLEAN,corrupted\n"
                       '" Mary",hello," John","After John and Mary went to the store, Mary gave a bottle of milk to",'
                       '"After John and Mary went to the store, John gave a bottle of milk to"\n').encode(),
                      "p.csv", tokenizer)
    assert len(ds) == 1 and ds.items[0].pair.answer == " John" and not ds.rejected


def test_jsonl_rows(tokenizer):
    good = json.loads("[" + GOOD + "]")
    ok = json.dumps(dict(zip(["clean", "corrupted", "answer", "wrong"], good)))
    text = "\n".join([
        ok,                                        # 1
        "{not json",                               # 2
        "[1, 2]",                                  # 3
        json.dumps({"clean": "a", "corrupted": "b", "answer": " x"}),            # 4 missing wrong
        json.dumps({"clean": 1, "corrupted": "b", "answer": " x", "wrong": " y"}),  # 5 not text
        "",
        json.dumps({"clean": "The cat sat on the", "corrupted": "The dog sat on the",
                    "answer": " mat", "wrong": " rug", "extra": 1}),            # 7 ok
    ])
    ds = parse_upload(text, "pairs.jsonl", tokenizer)
    assert [it.line for it in ds.items] == [1, 7]
    rej = {r.line: r.reason for r in ds.rejected}
    assert "not valid JSON" in rej[2]
    assert "not a JSON object" in rej[3]
    assert "missing wrong" in rej[4]
    assert "clean must be text" in rej[5]
    assert str(ds.rejected[0]).startswith("line 2:")


def test_size_limits(tokenizer):
    big = "clean,corrupted,answer,wrong\n" + "x" * 2000
    with pytest.raises(DatasetError, match="limit"):
        parse_upload(big, "p.csv", max_bytes=1000)
    rows = ["clean,corrupted,answer,wrong"] + [f'"The cat {i} sat on the","The dog {i} sat on the"," mat"," rug"'
                                               for i in range(5)]
    ds = parse_upload("\n".join(rows), "p.csv", tokenizer, max_pairs=3)
    assert len(ds) == 3
    assert ds.rejected[-1].line == 5 and "limit of 3 pairs" in ds.rejected[-1].reason


def test_length_groups_and_for_sweep(tokenizer):
    text = "\n".join(["clean,corrupted,answer,wrong",
                      '"The cat sat on the","The dog sat on the"," mat"," rug"',
                      '"The cat sat on a","The dog sat on a"," mat"," rug"',
                      '"A big cat sat on the","A big dog sat on the"," mat"," rug"'])
    ds = parse_upload(text, "p.csv", tokenizer)
    groups = length_groups(ds)
    assert [len(v) for v in groups.values()] == [2, 1]
    n_big = list(groups)[0]
    sub = for_sweep(ds, per_position=True)
    assert len(sub) == 2 and all(it.n_tokens == n_big for it in sub.items)
    assert "equal token length" in sub.notes[-1] and "set aside: 1 with" in sub.notes[-1]
    assert for_sweep(ds, per_position=False) is ds
    other = list(groups)[1]
    assert len(for_sweep(ds, True, length=other)) == 1
    with pytest.raises(DatasetError, match="No pair has 99 tokens"):
        for_sweep(ds, True, length=99)
    ioi = generate_ioi(tokenizer, 8, seed=0)
    assert for_sweep(ioi, per_position=True) is ioi  # roles align different lengths
