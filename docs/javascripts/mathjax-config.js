// MathJax settings for pymdownx.arithmatex (generic mode): typeset only the spans and blocks it
// marks, so "\(" in code or prose elsewhere is left alone. Loaded before assets/mathjax/tex-svg.js,
// which the docs/hooks/mathjax.py hook copies from the installed django-static-mathjax package.
window.MathJax = {
  tex: {
    inline: [["\\(", "\\)"]],
    display: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
