#!/usr/bin/env python3
"""mdn_tokenize against tiktoken's gpt2 encoding, built from the shipped dataloader/gpt2 files the
way tiktoken_ext/openai_public.py builds it (explicit pattern, <|endoftext|> = 50256).

Cases: data/tinyshakespeare.txt (with a val split inside the one document, and four copies so that
the text is cut into several chunks, with 1 and 2 threads: shards must be byte-identical); a
torture text (scripts, emoji, numbers, contractions in any case, whitespace runs, code, very long
pieces) as a text file and as JSONL documents, plain and gzip-compressed; every Unicode code point
in contexts whose ids depend on its class; invalid UTF-8 (replaced as decode(errors="replace")
does, and counted); bad JSONL lines (counted, skipped). Exits 1 on any difference, and also when
tiktoken is not installed: a tokenizer test that cannot compare must not pass.
Usage: python3 test/test_tokenizer.py   (from the repo root, after `make mdn_tokenize`)
"""
import array
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
except ImportError:
    print("FAIL: tiktoken is not installed (pip install tiktoken); cannot compare token ids")
    sys.exit(1)

EOT = 50256
BIN = "./mdn_tokenize"
failures = []


def gpt2_encoding():
    ranks = data_gym_to_mergeable_bpe_ranks("dataloader/gpt2/vocab.bpe", "dataloader/gpt2/encoder.json")
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT})


def read_shards(pattern):
    ids = []
    for path in sorted(glob.glob(pattern)):
        data = open(path, "rb").read()
        header = array.array("i")
        header.frombytes(data[:1024])
        tokens = array.array("H")
        tokens.frombytes(data[1024:])
        assert header[0] == 20240520 and header[1] == 1 and header[2] == len(tokens), path
        ids += tokens.tolist()
    return ids


def run_tokenize(out, files, *flags):
    r = subprocess.run([BIN, "--out", out, *flags, *files], capture_output=True, text=True)
    if r.returncode != 0:
        failures.append(f"mdn_tokenize {' '.join(flags)} {files}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout + r.stderr


def check(name, ours, ref):
    if ours == ref:
        print(f"ok   {name}: {len(ref)} tokens identical")
        return
    i = next((k for k, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    failures.append(f"{name}: ids differ at {i} (ours {len(ours)} tokens, tiktoken {len(ref)}): "
                    f"ours {ours[max(0, i - 3):i + 5]} tiktoken {ref[max(0, i - 3):i + 5]}")


def torture_text():
    parts = [
        "Hello world! It's 3:45pm, isn't it? I'M SURE THEY'LL COME. We'Re here, you'Ve been, he'D go, she'S, I'm, "
        "'twas 'tis; ''quoted'' '''triple''' 's 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x '",
        "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 0x1F 1,000,000 ²³¹ ½ ¼ Ⅻ ↉ ٣٤٥ ४५६ 一二三 ①②③ 𝟙𝟚𝟛",
        "Scripts: Ελληνικά русский язык עברית العربية हिन्दी বাংলা ไทย 日本語のテキスト 中文字符 한국어 ქართული "
        "Ꭰꮳ ᚠᛇᚻ ꦗꦮ 𐌰𐌱 ꓐꓑ Türkçe İıŞş straße ǅǈǋ ß ﬁ",
        "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇺🇸🇯🇵 ☃ ✓ ✗ ⚡",
        "Combining: e\u0301 a\u0308 n\u0303 \u0301lone Z\u0335\u0321a\u0336l\u0337g\u0334o",
        "Whitespace:  two  spaces   three    four\ttab\t\ttabs \t mixed \n\nnewlines\n\n\n\nrun\r\nCRLF\r\n\r\n"
        "nbsp\u00a0here\u00a0\u00a0twice ideographic\u3000space line\u2028sep para\u2029sep nel\u0085x "
        "en\u2002em\u2003thin\u2009hair\u200a zwsp\u200bnot-space \u180emongolian  \n \n\t\n   trailing   ",
        "Code: def f(x):\n    return x**2 + 1  # square\n\nint main(void) { printf(\"%d\\n\", a[i]++); }\n"
        "<div class=\"a\">&amp;</div> SELECT * FROM t WHERE id=1; $ echo $HOME && ls -la | grep '^d'\n"
        "https://example.com/path?q=1&r=2#frag user@example.org C:\\Windows\\System32",
        "Controls: \x00 \x01\x02 \x7f \x1b[31mred\x1b[0m \ufeffbom \ufffd replacement \ue000 private \U0010fffd",
        "Unicode 16 letters: \u1c89\u1c8a \U00010d50\U00010d51; unassigned: \u0378 \U0002ffff; Unicode 17: \U00010940",
        "Long: " + "!" * 3000 + " " + "7" * 5000 + " " + "abc" * 2000 + " " * 10000 + "x" + "\t" * 700 + "\n" * 900
        + "-=" * 1500 + " " + "aé" * 1000 + " " + "ab12" * 500 + " QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=" * 40,
        "Edge: a  b   c\n d \n\ne  \nf\t \tg ' s ' ll '\n's don’t won’t ‘quoted’ “double” — – … ",
    ]
    return "\n".join(parts)


def main():
    if not os.path.exists(BIN):
        print(f"FAIL: {BIN} not built (make mdn_tokenize)")
        return 1
    enc = gpt2_encoding()
    # tiktoken's own consistency: the shipped files give the published gpt2 ids for a known string
    if enc.encode_ordinary("Hello world") != [15496, 995]:
        print("FAIL: the tiktoken encoding built from dataloader/gpt2 is not gpt2's")
        return 1
    tmp = tempfile.mkdtemp(prefix="mdn_tok_")

    # 1. tinyshakespeare, val split inside the document
    text = open("data/tinyshakespeare.txt", encoding="utf-8").read()
    ref = [EOT] + enc.encode_ordinary(text)
    run_tokenize(f"{tmp}/ts", ["data/tinyshakespeare.txt"], "--val-fraction", "0.1", "--shard-size", "50000")
    val, train = read_shards(f"{tmp}/ts/tinyshakespeare_val_*.bin"), read_shards(f"{tmp}/ts/tinyshakespeare_train_*.bin")
    check("tinyshakespeare (val + train)", val + train, ref)
    if not (0.08 < len(val) / len(ref) < 0.12):
        failures.append(f"val fraction 0.1 gave {len(val)} of {len(ref)} tokens")
    if len(glob.glob(f"{tmp}/ts/*_train_*.bin")) != (len(train) + 49999) // 50000:
        failures.append("tinyshakespeare: wrong number of 50000-token train shards")

    # 2. four copies in one document: several chunks; 1 and 2 threads give identical shards
    big = f"{tmp}/big.txt"
    with open(big, "w", encoding="utf-8") as f:
        f.write(text * 4)
    run_tokenize(f"{tmp}/big1", [big], "--threads", "1", "--val-fraction", "0.3")
    run_tokenize(f"{tmp}/big2", [big], "--threads", "2", "--val-fraction", "0.3")
    ours1 = read_shards(f"{tmp}/big1/big_val_*.bin") + read_shards(f"{tmp}/big1/big_train_*.bin")
    ours2 = read_shards(f"{tmp}/big2/big_val_*.bin") + read_shards(f"{tmp}/big2/big_train_*.bin")
    check("tinyshakespeare x4, 1 thread", ours1, [EOT] + enc.encode_ordinary(text * 4))
    for a, b in zip(sorted(glob.glob(f"{tmp}/big1/*.bin")), sorted(glob.glob(f"{tmp}/big2/*.bin"))):
        if open(a, "rb").read() != open(b, "rb").read():
            failures.append(f"{a} and {b} differ: the output depends on the thread count")

    # 3. the torture text: as one text file, and as JSONL documents (plain and gzip)
    torture = torture_text()
    tfile = f"{tmp}/torture.txt"
    with open(tfile, "w", encoding="utf-8", newline="") as f:
        f.write(torture)
    run_tokenize(f"{tmp}/tt", [tfile])
    check("torture text", read_shards(f"{tmp}/tt/torture_train_*.bin"), [EOT] + enc.encode_ordinary(torture))
    # lone surrogates only exist as \u escapes (raw, they would be invalid UTF-8): both sides give U+FFFD
    docs = torture.split("\n") + [torture, "", " ", "\n\n", "a\ud800b \udc00 \ud83d\ude00"]
    lines = [json.dumps({"meta": {"n": i}, "text": d}, ensure_ascii=(i % 2 == 0 or "\ud800" in d))
             for i, d in enumerate(docs)]
    jfile = f"{tmp}/torture.jsonl"
    with open(jfile, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(jfile, "rb") as f, gzip.open(f"{tmp}/torture_gz.jsonl.gz", "wb") as g:
        g.write(f.read())
    ref = []
    for d in docs:
        ref += [EOT] + enc.encode_ordinary(d)
    run_tokenize(f"{tmp}/tj", [jfile])
    check("torture JSONL", read_shards(f"{tmp}/tj/torture_train_*.bin"), ref)
    run_tokenize(f"{tmp}/tg", [f"{tmp}/torture_gz.jsonl.gz"])
    check("torture JSONL.gz", read_shards(f"{tmp}/tg/torture_gz_train_*.bin"), ref)

    # 4. every code point (surrogates excepted) where its class decides the ids: "x" c "'s" is
    #    x | c' | s for punctuation-like c and x(c) | 's otherwise
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    every = "".join(f"x{chr(c)}'s {chr(c)}1{chr(c)}\n" for c in cps)
    efile = f"{tmp}/every.txt"
    with open(efile, "w", encoding="utf-8", newline="") as f:
        f.write(every)
    run_tokenize(f"{tmp}/ev", [efile])
    check("every code point", read_shards(f"{tmp}/ev/every_train_*.bin"), [EOT] + enc.encode_ordinary(every))

    # 5. invalid UTF-8: replaced like bytes.decode("utf-8", "replace"), counted
    bad = (b"ok \x80 lone continuation \xc0\xaf overlong \xe0\x80\x80 \xed\xa0\x80 surrogate \xf4\x90\x80\x80 "
           b"too big \xf0\x9f\x98a truncated emoji \xe2\x82 \xff\xfe\xfd \xc3\xa9 valid \xe2\x82\xac\n\xc3")
    bfile = f"{tmp}/bad.txt"
    with open(bfile, "wb") as f:
        f.write(bad)
    out = run_tokenize(f"{tmp}/bad", [bfile])
    decoded = bad.decode("utf-8", "replace")
    check("invalid UTF-8", read_shards(f"{tmp}/bad/bad_train_*.bin"), [EOT] + enc.encode_ordinary(decoded))
    if f"{decoded.count(chr(0xFFFD))} invalid UTF-8 sequences" not in out:
        failures.append(f"invalid UTF-8 not counted as {decoded.count(chr(0xFFFD))} sequences: {out}")

    # 6. bad JSONL lines are counted and skipped; the good documents still come out right
    good = ["first document", "second's text"]
    jlines = [json.dumps({"text": good[0]}), "not json at all", '{"text": "unterminated', json.dumps({"txt": "x"}),
              json.dumps({"text": 5}), "", json.dumps({"text": good[1]}), "[1, 2]"]
    jbad = f"{tmp}/badlines.jsonl"
    with open(jbad, "w") as f:
        f.write("\n".join(jlines))  # no final newline
    out = run_tokenize(f"{tmp}/bj", [jbad])
    check("JSONL with bad lines", read_shards(f"{tmp}/bj/badlines_train_*.bin"),
          [EOT] + enc.encode_ordinary(good[0]) + [EOT] + enc.encode_ordinary(good[1]))
    if "2 lines not JSON, 3 lines without a \"text\" string" not in out or "badlines.jsonl:2:" not in out:
        failures.append(f"bad JSONL lines not reported as expected: {out}")

    # 7. several inputs of mixed kinds (text, text.gz, JSONL) with the val cut inside the second
    #    (by bytes on disk): val then train is the documents in order
    m1, m2, m3 = text[:300000], text[-400000:], [json.dumps({"text": d}) for d in text.split("\n\n")[:3000]]
    with open(f"{tmp}/m1.txt", "w") as f:
        f.write(m1)
    with gzip.open(f"{tmp}/m2.txt.gz", "wt") as f:
        f.write(m2)
    with open(f"{tmp}/m3.jsonl", "w") as f:
        f.write("\n".join(m3) + "\n")
    run_tokenize(f"{tmp}/mix", [f"{tmp}/m1.txt", f"{tmp}/m2.txt.gz", f"{tmp}/m3.jsonl"], "--name", "mix",
                 "--val-fraction", "0.35", "--shard-size", "100000")
    ref = [EOT] + enc.encode_ordinary(m1) + [EOT] + enc.encode_ordinary(m2)
    for d in text.split("\n\n")[:3000]:
        ref += [EOT] + enc.encode_ordinary(d)
    val, train = read_shards(f"{tmp}/mix/mix_val_*.bin"), read_shards(f"{tmp}/mix/mix_train_*.bin")
    check("text + text.gz + JSONL, val cut in the .gz", val + train, ref)
    first_two = 2 + len(enc.encode_ordinary(m1)) + len(enc.encode_ordinary(m2))
    if not (1 + len(enc.encode_ordinary(m1)) < len(val) < first_two):
        failures.append(f"mixed inputs: val {len(val)}, train {len(train)} tokens: the cut is not in the second file")

    # 8. command-line mistakes: one "error:" line naming the file or flag, exit 1; --help exits 0
    for args, fragment in [([f"{tmp}/none.txt"], f"error: {tmp}/none.txt: cannot open"),
                           (["--val-fraction", "2", tfile], "error: --val-fraction: '2'"),
                           (["--shard-size", "0", tfile], "error: --shard-size: '0'"),
                           (["--bogus", "1", tfile], "error: --bogus: unknown option"),
                           (["--bpe-dir", tmp, tfile], f"error: {tmp}/encoder.json: cannot open")]:
        r = subprocess.run([BIN, "--out", f"{tmp}/err", *args], capture_output=True, text=True)
        if r.returncode != 1 or r.stderr.count("error:") != 1 or fragment not in r.stderr:
            failures.append(f"{args}: expected exit 1 and one line with '{fragment}', got {r.returncode}: {r.stderr!r}")
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True)
    if r.returncode != 0 or "--val-fraction" not in r.stdout:
        failures.append("--help does not print the usage")

    shutil.rmtree(tmp, ignore_errors=True)
    for msg in failures:
        print("FAIL " + msg)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
