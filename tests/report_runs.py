"""Tiny trained and evaluated runs for the report tests, trained once per pytest run."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from cifarkit.cli import main

COMMON = ["--set", "data.verify=false", "--set", "train.batch_size=64", "--epochs", "2"]
RECIPES = {
    # seed000's machinery at toy width: EMA, SWA, a best+EMA+SWA ensemble, 6-view TTA, a validation split.
    "se": ["--recipe", "seed000", "--set", "data.val_size=100", "--set", "model.stem_width=8",
           "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]", "--set", "train.warmup_epochs=1",
           "--set", "train.swa_start=0.5", "--seed", "1"],
    # a speed-run net without a validation split.
    "fast": ["--recipe", "fast94", "--set", "data.val_size=0", "--set", "data.train_subset=256",
             "--set", "model.widths=[8,16,16]", "--set", "train.micro_batch=0", "--seed", "0"],
}
_trained: dict[str, Path] = {}


def trained_run(name: str, fake_cifar: Path, tmp_path_factory) -> Path:
    """The run directory of RECIPES[name], trained and evaluated by `cifarkit train` (once)."""
    if name not in _trained:
        run = tmp_path_factory.mktemp("report-runs") / name
        assert main(["train", *RECIPES[name], *COMMON, "--data-dir", str(fake_cifar), "--out", str(run)]) == 0
        _trained[name] = run
    return _trained[name]


class StrictPage(HTMLParser):
    """Parses a page and fails on a closing tag that does not match the open one."""

    VOID = {"meta", "link", "img", "br", "hr", "input", "source", "col", "area", "base", "wbr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.imgs, self.hrefs, self.ids, self.scripts = [], [], [], [], 0
        self.tags: list[str] = []
        self.feed(text)
        self.close()
        assert self.stack == [], f"unclosed tags at the end: {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs.get("src", ""))
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        self.scripts += tag == "script"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()
