// Runs in a page of the built docs site once it has loaded (tests/docs/test_site_renders.py):
// waits for MathJax and the images, then returns [kind, what] for everything a reader would see
// raw. Text inside code, scripts and typeset formulas is not prose.
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await Promise.all([...document.images].map((img) => img.complete ? null :
    new Promise((done) => {
      img.addEventListener("load", done);
      img.addEventListener("error", done);
    })));
  const NOT_PROSE = "code, pre, script, style, kbd, samp, textarea, noscript, mjx-container";
  const TEX = /\\\(|\\\)|\\\[|\\\]|\$\$|\\[A-Za-z]{2,}/;
  const ROLE = /:(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const|ref|doc|term):/;
  // a Markdown table that did not become one (e.g. a separator row with another cell count)
  const RAW_TABLE = /\|\s*:?-{3,}:?\s*\|/;
  // a code span that did not close (e.g. a line break inside it that starts with "+ " in a
  // list item, read as a nested list)
  const RAW_BACKTICK = /`/;
  const problems = [];
  const context = (node) => (node.parentElement.closest("p, li, td, th, h1, h2, h3, h4, h5, h6, div")
    || node.parentElement).textContent.replace(/\s+/g, " ").trim().slice(0, 160);
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement.closest(NOT_PROSE)) continue;
    if (TEX.test(node.data)) problems.push(["raw TeX", context(node)]);
    if (ROLE.test(node.data)) problems.push(["raw Sphinx role", context(node)]);
    if (RAW_TABLE.test(node.data)) problems.push(["table shown as raw pipes", context(node)]);
    if (RAW_BACKTICK.test(node.data)) problems.push(["raw backtick", context(node)]);
  }
  for (const error of document.querySelectorAll("mjx-merror, [data-mjx-error]")) {
    problems.push(["formula MathJax rejected", error.getAttribute("data-mjx-error") || error.textContent]);
  }
  for (const img of document.images) {
    if (!(img.complete && img.naturalWidth > 0)) problems.push(["broken image", img.getAttribute("src")]);
  }
  for (const table of document.querySelectorAll("table")) {
    const box = table.closest(".md-typeset__scrollwrap") || table.parentElement;
    const width = Math.max(table.scrollWidth, box.scrollWidth);
    if (width > box.clientWidth + 1) {
      problems.push([`table wider than the page (${width} > ${box.clientWidth} px)`,
        table.rows[0].innerText.replace(/\s+/g, " ").trim().slice(0, 160)]);
    }
  }
  for (const quote of document.querySelectorAll("blockquote blockquote")) {
    problems.push([">>> example shown as nested quotes", quote.textContent.trim().slice(0, 160)]);
  }
  return problems;
})()
