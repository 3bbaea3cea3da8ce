"""The attention viewer in a real browser: headless Chromium opens the page `attnlab inspect
attention` writes, from file://, and the mouse drives it. Hovering a token highlights the
attention of the focused head, clicking keeps it, clicking again lets go; heads are focused and
kept the same way; a text holding markup shows as text and runs nothing; the page fetches
nothing and reports no error. Needs Chromium and Playwright (.ci/run and `make setup` install
them): without them these tests fail, saying what to install."""

import re
import string

from browser import open_file
from helpers import run, tiny_gpt

from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig
from attnlab.tokenizers.bpe import BPETokenizer
from attnlab.tokenizers.char import CharTokenizer
from attnlab.training.checkpoints import save_checkpoint

CHARS = string.printable
MARKUP = "<img src=x onerror=window.__pwned=1><script>window.__pwned=2</script>"
TEXT = MARKUP + " <b>is text</b> & so is this"
NAMED = "<img src=x onerror=window.__pwned=3>"  # a checkpoint's name: the page's title
BLUE, ORANGE = (66, 133, 244), (230, 126, 34)  # where a query attends; what attends to a key
MARKS = ("active", "locked")  # a token's classes: the one shown; the one kept


def write_page(tmp_path, capsys, model, tokenizer, *flags):
    checkpoint = tmp_path / NAMED
    save_checkpoint(checkpoint, model.eval(), {"tokenizer": tokenizer})
    out = tmp_path / "view.html"
    code, _, err = run(["inspect", "attention", str(checkpoint), *flags, "--out", str(out)],
                       capsys)  # fmt: skip
    assert code == 0, err
    return checkpoint, out


def colour(css: str):
    """(r, g, b) and alpha of a computed CSS colour; None for no colour at all."""
    r, g, b, a = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", css).groups()
    rgb, alpha = (int(r), int(g), int(b)), float(a or 1)
    return None if (rgb, alpha) == ((0, 0, 0), 0) else (rgb, alpha)


def tokens(page):
    """The highlight each token shows, per side ('q', 'k'), and the tokens marked active and
    locked, as (side, index)."""
    rows = page.evaluate("""() => [...document.querySelectorAll(".tok")].map(s =>
        [s.dataset.side, Number(s.dataset.index), getComputedStyle(s).backgroundColor,
         [...s.classList]])""")
    shown = {"q": [], "k": []}
    for side, _, background, _ in rows:
        shown[side].append(colour(background))
    marked = {c: [(s, i) for s, i, _, classes in rows if c in classes] for c in MARKS}
    return shown, marked


def attends(matrix, side, index):
    """What hovering token `index` of `side` highlights: the other side's tokens, by weight."""
    if side == "q":
        return {"q": [None] * len(matrix), "k": [(BLUE, w / 1000) for w in matrix[index]]}
    return {"q": [(ORANGE, row[index] / 1000) for row in matrix], "k": [None] * len(matrix[0])}


def same(shown, expected):
    def close(a, b):
        return a == b or (a and b and a[0] == b[0] and abs(a[1] - b[1]) < 0.006)

    return all(
        len(shown[s]) == len(expected[s]) and all(map(close, shown[s], expected[s])) for s in "qk"
    )


def heads(page):
    """(panel, layer, head) of the focused head; of the kept one (None when none is)."""
    rows = page.evaluate("""() => [...document.querySelectorAll("canvas.thumb")].map(c =>
        [[c.dataset.panel, c.dataset.layer, c.dataset.head].map(Number), [...c.classList]])""")
    focus = [tuple(key) for key, classes in rows if "focus" in classes]
    locked = [tuple(key) for key, classes in rows if "locked" in classes]
    assert len(focus) == 1 and len(locked) <= 1 and set(locked) <= set(focus), rows
    return focus[0], (locked or [None])[0]


def thumb(p, l, h):
    return f'canvas.thumb[data-panel="{p}"][data-layer="{l}"][data-head="{h}"]'


def tok(side, index):
    return f'.tok[data-side="{side}"][data-index="{index}"]'


def texts(page, side):
    """The text each token of #queries or #keys shows."""
    return page.eval_on_selector_all(f"#{side} .tok", "s => s.map(t => t.textContent)")


def matrix(page, p, l, h):
    script = "() => JSON.parse(document.getElementById('attention-data').textContent)"
    return page.evaluate(script)["panels"][p]["layers"][l][h]


def test_a_gpt_page_follows_the_mouse_and_shows_markup_as_text(browser, tmp_path, capsys):
    # tags are whole tokens: a page that read token text as HTML would run the first one
    tokenizer = BPETokenizer.train([TEXT], 400, pattern=r"<[^>]*>|[^<]")
    labels = [tokenizer.decode([i]) for i in tokenizer.encode(TEXT)]
    assert labels[:2] == [MARKUP[:36], "<script>"] and len(labels) == 42
    model = tiny_gpt(context_length=64, vocab_size=tokenizer.vocab_size)
    checkpoint, out = write_page(tmp_path, capsys, model, tokenizer, "--text", TEXT,
                                 "--layer", "1", "--head", "1")  # fmt: skip
    opened = open_file(browser, out)
    page = opened.page

    # the markup is text: in the title and in every token, and nothing of it ran
    assert page.evaluate("() => window.__pwned") is None
    assert page.title() == str(checkpoint) == page.text_content("#title")
    assert texts(page, "queries") == labels == texts(page, "keys")
    assert page.locator("img, b, #grids script, .tokens script").count() == 0

    # --layer 1 --head 1: that head is kept; hovering another does not move it
    assert heads(page) == ((0, 1, 1), (0, 1, 1))
    assert page.text_content("#focus-title").endswith("layer 1, head 1 (kept)")
    page.hover(thumb(0, 0, 0))
    assert heads(page) == ((0, 1, 1), (0, 1, 1))

    # hovering a token shows where it attends; another token, another highlight
    m = matrix(page, 0, 1, 1)
    nothing = tokens(page)
    assert nothing[0] == {"q": [None] * len(labels), "k": [None] * len(labels)}
    page.hover(tok("q", 40))
    shown, marked = tokens(page)
    assert same(shown, attends(m, "q", 40)) and marked == {"active": [("q", 40)], "locked": []}
    assert shown != nothing[0] and len({a for _, a in shown["k"]}) > 2  # not flat
    page.hover(tok("q", 20))
    assert same(tokens(page)[0], attends(m, "q", 20))
    page.mouse.move(0, 0)
    assert tokens(page) == nothing

    # a click keeps it: other tokens and leaving change nothing; a second click lets go
    page.click(tok("q", 20))
    kept = tokens(page)
    assert same(kept[0], attends(m, "q", 20)) and kept[1]["locked"] == [("q", 20)]
    page.hover(tok("k", 5))
    page.mouse.move(0, 0)
    assert tokens(page) == kept
    page.click(tok("q", 20))
    assert tokens(page)[1] == {"active": [("q", 20)], "locked": []}
    page.hover(tok("k", 5))
    assert same(tokens(page)[0], attends(m, "k", 5))  # what attends to key 5

    # heads: a click on the kept head lets it go; hover focuses; a click keeps the new one
    page.click(thumb(0, 1, 1))
    assert heads(page) == ((0, 1, 1), None)
    assert page.text_content("#focus-title").endswith("layer 1, head 1")
    page.hover(thumb(0, 0, 1))
    assert heads(page) == ((0, 0, 1), None)
    page.click(thumb(0, 0, 1))
    page.hover(thumb(0, 1, 0))
    assert heads(page) == ((0, 0, 1), (0, 0, 1))
    page.hover(tok("q", 40))
    assert same(tokens(page)[0], attends(matrix(page, 0, 0, 1), "q", 40))  # the kept head's

    screenshot = tmp_path / "viewer.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000
    assert page.evaluate("() => window.__pwned") is None
    assert opened.requests == [out.resolve().as_uri()]  # the page itself and nothing else
    assert opened.errors == []


def test_an_encoder_decoder_page_shows_source_target_and_cross(browser, tmp_path, capsys):
    v = len(CHARS)
    model = EncoderDecoder(EncoderDecoderConfig(
        vocab_size=v + 3, max_length=32, n_encoder_layers=1, n_decoder_layers=2, n_heads=2,
        d_model=16, d_ff=32, pad_id=v, bos_id=v + 1, eos_id=v + 2))  # fmt: skip
    tokenizer = CharTokenizer(CHARS, ["<pad>", "<s>", "</s>"])
    _, out = write_page(tmp_path, capsys, model, tokenizer,
                        "--text", "one <b>two</b>", "--target", "1 <i>2")  # fmt: skip
    opened = open_file(browser, out)
    page = opened.page

    titles = page.eval_on_selector_all("#grids h2", "hs => hs.map(h => h.textContent)")
    assert titles == ["encoder_blocks self-attention", "decoder_blocks self-attention",
                      "decoder_blocks cross-attention"]  # fmt: skip
    source, target = [*"one <b>two</b>", "</s>"], ["<s>", *"1 <i>2"]
    for p, queries, keys in [(0, source, source), (1, target, target), (2, target, source)]:
        page.hover(thumb(p, 0, 1))
        assert heads(page) == ((p, 0, 1), None)
        assert texts(page, "queries") == queries and texts(page, "keys") == keys
    page.click(thumb(2, 1, 0))  # keep a cross-attention head: target tokens attend to the source
    cross = matrix(page, 2, 1, 0)
    for index in (0, 3):
        page.hover(tok("q", index))
        assert same(tokens(page)[0], attends(cross, "q", index))
    page.hover(tok("k", 2))
    assert same(tokens(page)[0], attends(cross, "k", 2))
    assert page.locator("b, i, s, img").count() == 0
    assert opened.requests == [out.resolve().as_uri()] and opened.errors == []


# tokens of invisible characters show their code points
ODD = {"\r": "U+000D", "\u200b": "U+200B", "\u0301": "U+0301", "\n": "\u21b5"}
FOCUSED = """() => { const e = document.activeElement, style = getComputedStyle(e);
    return [e.getAttribute("aria-label"), e.getAttribute("aria-pressed"), style.outlineStyle]; }"""


def keyboard_page(browser, tmp_path, capsys, **size):
    text = "ab\r\u200b\u0301 \u05e9\u05dc\u05d5\u05dd\U0001f600\nc"
    chars = sorted(set(text))
    model = tiny_gpt(context_length=16, vocab_size=len(chars))
    _, out = write_page(tmp_path, capsys, model, CharTokenizer(chars), "--text", text,
                        "--layer", "1", "--head", "0")  # fmt: skip
    return open_file(browser, out, **size), list(text)


def press(page, *keys):
    for key in keys:
        page.keyboard.press(key)
    return page.evaluate(FOCUSED)


def test_the_page_works_by_keyboard_alone_and_names_every_control(browser, tmp_path, capsys):
    opened, labels = keyboard_page(browser, tmp_path, capsys)
    page = opened.page
    assert texts(page, "queries") == [ODD.get(c, c) for c in labels]

    # one Tab stop each: the heads (the kept one first), the queries, the keys; then out
    name = "blocks self-attention, layer 1, head 0"
    assert press(page, "Tab") == [name, "true", "dashed"]  # named, kept, its focus visible
    assert press(page, "Tab")[0] == "query 0 \u201c\u2068a\u2069\u201d"
    assert press(page, "Tab")[0] == "key 0 \u201c\u2068a\u2069\u201d"
    assert press(page, "Tab")[0] is None and press(page, "Shift+Tab")[0].startswith("key 0")

    # heads: the arrows move (as hovering does: the kept head stays), Enter keeps, Space lets go
    assert press(page, "Shift+Tab", "Shift+Tab", "ArrowUp", "ArrowRight")[:2] == [
        "blocks self-attention, layer 0, head 1", "false"]  # fmt: skip
    assert heads(page) == ((0, 1, 0), (0, 1, 0))
    assert press(page, "Enter")[1] == "true" and heads(page) == ((0, 0, 1), (0, 0, 1))
    press(page, " ", "ArrowLeft")
    assert heads(page) == ((0, 0, 0), None)  # let go: the arrows now look as hovering does
    assert page.text_content("#focus-title") == "blocks self-attention, layer 0, head 0"
    press(page, "Enter")

    # tokens: focus shows where one attends, Enter keeps it; each weight is read as a number
    m = matrix(page, 0, 0, 0)
    press(page, "Tab", "End", "ArrowLeft")
    last = len(labels) - 2
    assert same(tokens(page)[0], attends(m, "q", last))
    assert press(page, "Enter")[1] == "true" and tokens(page)[1]["locked"] == [("q", last)]
    weight = f"{m[last][1] / 1000:.3f}"  # of key 1, for the kept query
    key = "key 1 \u201c\u2068b\u2069\u201d"  # isolated: a right-to-left token moves nothing
    assert press(page, "Tab", "ArrowRight")[0] == f"{key}, weight {weight}"
    assert page.text_content("#readout").endswith(f"; {key}: {weight}")
    best = max(range(len(labels)), key=lambda j: m[last][j])
    assert f"attends most to key {best} " in page.text_content("#readout")
    canvases = page.eval_on_selector_all(
        "canvas", "cs => cs.map(c => [c.getAttribute('role'), c.getAttribute('aria-label')])"
    )
    assert len(canvases) == 5 and all(role and label for role, label in canvases)
    assert opened.errors == []


# the contrast of each token's text with its background: the highlight over the page's white
CONTRAST = """() => [...document.querySelectorAll(".tok")].map(s => {
    const rgba = c => c.match(/[\\d.]+/g).map(Number), text = rgba(getComputedStyle(s).color);
    const [r, g, b, a = 1] = rgba(getComputedStyle(s).backgroundColor);
    const lum = c => c.slice(0, 3).map(v => v / 255)
        .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
        .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
    const back = lum([r, g, b].map(v => v * a + 255 * (1 - a))), fore = lum(text);
    return (Math.max(back, fore) + 0.05) / (Math.min(back, fore) + 0.05); })"""


def test_a_narrow_page_scrolls_only_the_heads_and_its_text_keeps_its_contrast(
    browser, tmp_path, capsys
):
    page = keyboard_page(browser, tmp_path, capsys, width=320, height=600)[0].page
    width = "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    assert page.evaluate(width) == [320, 320]  # nothing but the heads' grid scrolls sideways
    assert page.eval_on_selector("#focus-map", "m => m.getBoundingClientRect().right") <= 320
    for kept in (tok("q", 0), tok("k", 0)):  # query 0 gives key 0 a weight of 1: the strongest
        page.click(kept)
        shown = tokens(page)[0]["k" if "q" in kept else "q"]
        assert max(alpha for _, alpha in filter(None, shown)) > 0.999
        assert min(page.evaluate(CONTRAST)) >= 4.5  # WCAG AA
        page.click(kept)
