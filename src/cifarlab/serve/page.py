"""The demo page of `cifarlab serve`: one self-contained HTML file (no CDN, no network).

It lives in a Python module rather than a data file so that every install (wheel, editable,
zipapp) has it without package-data settings. Values from the run are HTML-escaped here; labels
from the API are set with `textContent` in the browser, so a class folder named `<script>` stays text.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cifarlab: __RUN__</title>
<link rel="icon" href="data:,">
<style>
  body { font: 16px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
  main { max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
  #model { color: #4a5568; margin: 0 0 1.25rem; }
  #drop { display: block; border: 2px dashed #a0aec0; border-radius: .75rem; padding: 2.5rem 1rem;
          text-align: center; background: #fff; cursor: pointer; }
  #drop.over { border-color: #3b6fd8; background: #eef3fd; }
  #drop input { display: block; margin: .75rem auto 0; }
  #result { display: flex; gap: 1.5rem; align-items: flex-start; margin-top: 1.5rem; }
  #result[hidden] { display: none; }
  #preview { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated;
             background: #fff; border: 1px solid #e2e8f0; border-radius: .5rem; }
  #top { flex: 1; list-style: none; margin: 0; padding: 0; }
  #top li { display: grid; grid-template-columns: 7rem 1fr 4rem; gap: .5rem; align-items: center;
            margin-bottom: .45rem; }
  #top li:first-child .label { font-weight: 600; }
  .bar { background: #e2e8f0; border-radius: .25rem; height: .9rem; overflow: hidden; }
  .bar div { background: #3b6fd8; height: 100%; }
  .prob { text-align: right; font-variant-numeric: tabular-nums; }
  #error { color: #b42318; font-weight: 600; }
  body.busy #top { opacity: .4; }
  .hint { color: #718096; font-size: .85rem; margin-top: 2rem; }
</style>
</head>
<body>
<main>
  <h1>cifarlab <span id="run">__RUN__</span></h1>
  <p id="model">Model <b id="model-name">__MODEL__</b> (recipe __RECIPE__), <span
    id="weights">__WEIGHTS__</span> &middot; validation accuracy <b id="accuracy">__ACCURACY__</b>
    &middot; __CLASSES__ classes__REPORT__</p>
  <label id="drop">Drop an image here, or choose one:
    <input id="file" type="file" accept="image/*">
  </label>
  <div id="result" hidden>
    <img id="preview" alt="your image">
    <ol id="top"></ol>
  </div>
  <p id="error" role="alert"></p>
  <p class="hint">Images are shrunk to 32&times;32 pixels, the size the model was trained on.
    Uploads up to __MAX_MB__ MB. API: <code>POST predict</code>, <code>GET health</code>,
    <a href="openapi.json">openapi.json</a>.</p>
</main>
<script>
"use strict";
const MAX_BYTES = __MAX_BYTES__;
const $ = (id) => document.getElementById(id);

async function classify(file) {
  const top = $("top");
  $("error").textContent = "";
  top.replaceChildren();
  delete top.dataset.label;
  $("preview").src = URL.createObjectURL(file);
  $("result").hidden = false;
  if (file.size > MAX_BYTES) {
    $("error").textContent = "This file is " + (file.size / 1048576).toFixed(1) +
      " MB; the server accepts up to " + (MAX_BYTES / 1048576).toFixed(1) + " MB.";
    return;
  }
  document.body.classList.add("busy");
  try {
    const response = await fetch("predict?top_k=5", {
      method: "POST", body: file,
      headers: {"Content-Type": file.type || "application/octet-stream"},
    });
    const body = await response.json().catch(() => ({detail: response.statusText}));
    if (!response.ok) throw new Error(body.detail || ("HTTP " + response.status));
    for (const guess of body.top) {
      const row = document.createElement("li");
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = guess.label;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("div");
      fill.style.width = (100 * guess.prob).toFixed(1) + "%";
      bar.append(fill);
      const prob = document.createElement("span");
      prob.className = "prob";
      prob.textContent = (100 * guess.prob).toFixed(1) + "%";
      row.append(label, bar, prob);
      top.append(row);
    }
    top.dataset.label = body.top[0].label;
  } catch (error) {
    $("error").textContent = error.message;
  } finally {
    document.body.classList.remove("busy");
  }
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) classify(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""


def render_page(info: dict[str, Any], max_upload_bytes: int, has_report: bool) -> str:
    """The page for one model; `info` is the API's model description."""
    accuracy = info.get("val_acc")
    values = {
        "__RUN__": html.escape(str(info.get("run", ""))),
        "__MODEL__": html.escape(str(info.get("name", "?"))),
        "__RECIPE__": html.escape(str(info.get("recipe") or "?")),
        "__ACCURACY__": f"{100 * accuracy:.1f}%" if isinstance(accuracy, int | float) else "unknown",
        "__CLASSES__": str(len(info.get("classes", []))),
        "__WEIGHTS__": html.escape(f"{info.get('weights', 'final')} weights"
                                   + (f" of epoch {info['epoch']}" if info.get("epoch") else "")),
        "__REPORT__": ' &middot; <a id="report" href="report/report.html">training report</a>'
                      if has_report else "",
        "__MAX_MB__": f"{max_upload_bytes / 2**20:g}",
        "__MAX_BYTES__": json.dumps(int(max_upload_bytes)),
    }
    # One pass, so a run named like a placeholder is not substituted again.
    return re.sub(r"__[A-Z_]+__", lambda m: values.get(m.group(0), m.group(0)), PAGE)
