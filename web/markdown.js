// Answers as rich text: Markdown (marked), math (KaTeX, $...$ and $$...$$), sanitized (DOMPurify: model output is
// untrusted), then code highlighted (highlight.js) with a copy button. All bundled in web/vendor/, no CDN.
(function (root) {
  "use strict";

  // KaTeX and highlight.js are 400 KB of script the first paint does not need: they load once the page has painted
  // (the bench measured first paint 180 -> ~100 ms). Until then math shows as its source and code unhighlighted.
  const VENDOR = "/chat/assets/vendor/";
  function loadScript(name) {
    return new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = VENDOR + name;
      script.onload = script.onerror = resolve;  // (a failed library only costs its feature)
      document.head.append(script);
    });
  }
  function loadLibraries() {
    const style = document.createElement("link");
    style.rel = "stylesheet";
    style.href = VENDOR + "katex.min.css";
    document.head.append(style);
    return Promise.all([loadScript("katex.min.js"), loadScript("highlight.min.js")]);
  }
  const librariesLoaded = new Promise((resolve) => {
    requestAnimationFrame(() => setTimeout(() => loadLibraries().then(resolve), 0));
  });

  function escapeHtml(text) {
    return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }

  // Math spans become KaTeX HTML before sanitizing; a formula KaTeX cannot parse stays as its source text.
  function math(display) {
    const pattern = display ? /^\$\$([^$]+?)\$\$/ : /^\$([^$\n]+?)\$(?!\d)/;
    return {
      name: display ? "mathBlock" : "mathInline",
      level: display ? "block" : "inline",
      start: (src) => src.indexOf(display ? "$$" : "$"),
      tokenizer(src) {
        const match = pattern.exec(src);
        if (match) return { type: display ? "mathBlock" : "mathInline", raw: match[0], text: match[1].trim() };
      },
      renderer(token) {
        if (!root.katex) return escapeHtml(token.raw);  // (not loaded yet: the source, as text)
        return root.katex.renderToString(token.text, { throwOnError: false, displayMode: display, output: "html" });
      },
    };
  }

  let ready = false;
  function setUp() {
    if (ready) return;
    root.marked.use({ gfm: true, breaks: true, extensions: [math(true), math(false)] });
    // Links open elsewhere and tell the target nothing; only http(s) and mailto survive (no javascript:). Images
    // load only from data: URLs: an answer that names a remote image would make the browser call out (a prompt
    // injection's way to send the conversation somewhere); it shows the address instead.
    root.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "IMG") {
        const src = node.getAttribute("src") || "";
        if (!/^data:image\//i.test(src)) {
          node.removeAttribute("src");
          node.setAttribute("alt", "[image: " + src + "]");
        }
      }
      if (node.tagName === "A") {
        const href = node.getAttribute("href") || "";
        if (!/^(https?:|mailto:|#)/i.test(href)) node.removeAttribute("href");
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    ready = true;
  }

  function renderMarkdown(source) {
    setUp();
    return root.DOMPurify.sanitize(root.marked.parse(source || ""), { FORBID_TAGS: ["style", "form", "input"] });
  }

  // Highlights the code blocks of a rendered answer and gives each a copy button (once the answer is complete:
  // highlighting on every streamed token would be wasted work).
  function enhance(element) {
    for (const code of element.querySelectorAll("pre > code")) {
      if (code.dataset.enhanced) continue;
      code.dataset.enhanced = "1";
      if (root.hljs) root.hljs.highlightElement(code);
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy-code";
      copy.textContent = "Copy";
      copy.setAttribute("aria-label", "Copy code");
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(code.textContent);
          copy.textContent = "Copied";
        } catch (error) {
          copy.textContent = "Copy failed";
        }
        setTimeout(() => { copy.textContent = "Copy"; }, 1500);
      });
      code.parentElement.classList.add("has-copy");
      code.parentElement.append(copy);
    }
  }

  root.ChatMarkdown = { renderMarkdown, enhance, ready: librariesLoaded };
})(this);
