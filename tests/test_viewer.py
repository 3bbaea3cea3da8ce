"""The attention viewer's page (attnlab/interpretability/viewer.py): text only ever as data,
nothing fetched, and its script answering hover and click (run in Node when there is one; in a
browser by test_viewer_browser.py)."""

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from helpers import tiny_gpt

from attnlab.interpretability import attention_groups, capture
from attnlab.interpretability.inputs import Inputs
from attnlab.interpretability.viewer import render_html, script_json, viewer_data

HOSTILE = ["<script>alert(1)</script>", "</script><b>", "&amp;", "a\u2028b", "\n", " ", ""]


def hostile_page(selected=None):
    model = tiny_gpt(context_length=len(HOSTILE))
    ids = torch.randint(0, 11, (1, len(HOSTILE)))
    with torch.no_grad(), capture(model, streams=False) as seen:
        model(ids)
    inputs = Inputs((ids,), {"text": HOSTILE}, lambda layer: ("text", "text"))
    data = viewer_data("<b>ckpt</b>", attention_groups(model), seen, inputs, selected)
    return data, render_html(data)


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self.attributes, self._in_script = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def test_viewer_page_holds_text_as_data_only():
    data, page = hostile_page()
    parsed = Page()
    parsed.feed(page)
    assert parsed.tags.count("script") == 2  # the data block and the viewer's own code
    assert "alert(1)" not in page.replace(script_json(HOSTILE), "")  # only escaped, in the data
    assert "</script><b>" not in page and "<b>ckpt</b>" not in page
    assert "&lt;b&gt;ckpt&lt;/b&gt;" in page  # the title, escaped
    written = json.loads(json.dumps(data, default=torch.Tensor.tolist))  # weights as lists
    assert json.loads(parsed.scripts[0]) == written  # the data block reads back whole
    assert json.loads(parsed.scripts[0])["sequences"]["text"] == HOSTILE
    panel = data["panels"][0]
    assert len(panel["layers"]) == 2 and len(panel["layers"][0]) == 2  # layers, heads
    rows = panel["layers"][1][0]
    assert all(abs(sum(row) - 1000) <= len(row) for row in rows)  # thousandths, rounded


def test_the_weights_wait_as_tensors_until_the_page_is_written():
    """Lists of every weight took some 16 bytes a weight (the page: 2): 2.4 GB for GPT-2 small
    at its context of 1024. Made one head at a time as the page is written, they are not."""
    data, _ = hostile_page()
    heads = [head for panel in data["panels"] for layer in panel["layers"] for head in layer]
    assert len(heads) == 4 and all(torch.is_tensor(h) and h.dtype == torch.int16 for h in heads)


def test_viewer_page_fetches_nothing():
    _, page = hostile_page()
    parsed = Page()
    parsed.feed(page)
    names = {name for name, _ in parsed.attributes}
    assert not names & {"src", "href", "srcset", "action"}
    assert "default-src 'none'" in page  # the content security policy forbids any fetch
    for word in ("http:", "https:", "//cdn", "fetch(", "XMLHttpRequest", "import("):
        assert word not in page


# Without a browser, node runs the page's script against a small stand-in for the DOM, which
# checks what the script builds and does on events.
FAKE_DOM = r"""
const listeners = new Map(); const byId = {};
class El {
  constructor(tag) { this.tag = tag; this.children = []; this.style = {}; this.dataset = {};
    this.className = ""; this._text = ""; this.title = ""; this.attributes = {};
    this.classList = { toggle: (c, on) => {
      const s = new Set(this.className.split(" ").filter(Boolean));
      on ? s.add(c) : s.delete(c); this.className = [...s].join(" "); } }; }
  set textContent(t) { this._text = String(t); this.children = []; }
  get textContent() { return this._text; }
  setAttribute(name, value) { this.attributes[name] = String(value); }
  focus() { this.fire("focus"); }
  appendChild(c) { this.children.push(c); return c; }
  replaceChildren() { this.children = []; }
  addEventListener(type, f) { listeners.set(this, { ...(listeners.get(this) || {}), [type]: f }); }
  fire(type) { listeners.get(this)[type](); }
  querySelectorAll(sel) { const out = []; const walk = (e) => { for (const c of e.children) {
      if (c.className.split(" ").includes(sel.slice(1))) out.push(c); walk(c); } };
    walk(this); return out; }
  getContext() { return { createImageData: (w, h) => ({ data: new Uint8ClampedArray(4 * w * h) }),
    putImageData() {} }; }
}
const document = { createElement: (t) => new El(t),
  getElementById: (id) => byId[id] || (byId[id] = Object.assign(new El("div"), { id })) };
byId["attention-data"] = Object.assign(new El("script"), { _text: DATA });
eval(CODE);
const all = (id) => byId[id].querySelectorAll(".tok");
const thumbs = byId["grids"].children.flatMap((r) => r.children || [])
  .filter((c) => c.tag === "canvas");
const result = { thumbs: thumbs.length, title: byId["focus-title"].textContent,
  queries: all("queries").map((s) => s.textContent) };
all("queries")[2].fire("mouseenter");
result.hoverKeys = all("keys").map((s) => s.style.background);
all("queries")[2].fire("click");
all("queries")[0].fire("mouseenter");  // kept: hovering elsewhere changes nothing
result.lockedKeys = all("keys").map((s) => s.style.background);
all("queries")[2].fire("click");  // let go
all("keys")[1].fire("mouseenter");
result.keyHover = all("queries").map((s) => s.style.background);
thumbs[3].fire("click");
result.lockedTitle = byId["focus-title"].textContent;
thumbs[0].fire("mouseenter");
result.afterHover = byId["focus-title"].textContent;
console.log(JSON.stringify(result));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_viewer_script_builds_the_page_and_answers_hover_and_click():
    data, page = hostile_page(selected=(0, 1, 0))
    parsed = Page()
    parsed.feed(page)
    data_json, code = (json.dumps(script) for script in parsed.scripts)
    program = f"const DATA = {data_json};\nconst CODE = {code};\n"
    run = subprocess.run(
        ["node", "-e", program + FAKE_DOM], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["thumbs"] == 4  # 2 layers x 2 heads
    assert result["title"].startswith("blocks self-attention, layer 1, head 0 (kept)")
    assert result["queries"][0] == "<script>alert(1)</script>"  # as text, via textContent
    assert result["queries"][4] == "\u21b5" and result["queries"][6] == "\u2205"
    row = data["panels"][0]["layers"][1][0][2]  # query 2 of layer 1, head 0
    expected = [f"rgba(66,133,244,{w / 1000:g})" for w in row]
    assert result["hoverKeys"] == expected
    assert result["lockedKeys"] == expected
    column = [r[1] for r in data["panels"][0]["layers"][1][0]]
    assert result["keyHover"] == [f"rgba(230,126,34,{w / 1000:g})" for w in column]
    assert result["lockedTitle"].endswith("layer 1, head 1 (kept)")
    assert result["afterHover"] == result["lockedTitle"]
