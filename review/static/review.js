// Keyboard shortcuts for the review page. Kept out of the HTML so the page's
// Content-Security-Policy can forbid inline scripts (model text must never run).
(function () {
  function el(id) { return document.getElementById(id); }
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    var typing = t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA");
    if (typing) {
      if (ev.key === "Escape") { t.blur(); }
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && t.form) { t.form.requestSubmit(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) { return; }
    if (ev.key === "a" && el("approve-form")) { ev.preventDefault(); el("approve-form").requestSubmit(); }
    else if (ev.key === "r" && el("reject-reason")) { ev.preventDefault(); el("reject-reason").focus(); }
    else if (ev.key === "e" && el("edit-box")) { ev.preventDefault(); el("edit-box").open = true; el("edited-response").focus(); }
    else if (ev.key === "j" && el("next")) { window.location = el("next").href; }
    else if (ev.key === "k" && el("prev")) { window.location = el("prev").href; }
  });
})();
