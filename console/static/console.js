// Pillars console: refresh a live part of the page (run progress, endpoint charts) without a reload.
// An element with data-poll="URL" is replaced by the HTML fragment at URL every data-interval ms
// (default 1500) until the fragment carries data-done="true". Open <details> stay open.
"use strict";
(function () {
  function poll(box) {
    const url = box.dataset.poll;
    const interval = parseInt(box.dataset.interval || "1500", 10);
    async function tick() {
      try {
        const response = await fetch(url, { headers: { Accept: "text/html" }, credentials: "same-origin" });
        if (response.ok) {
          const open = Array.from(box.querySelectorAll("details[open]")).map((d) => d.id);
          const html = await response.text();
          const doc = new DOMParser().parseFromString(html, "text/html");
          const fresh = doc.querySelector("[data-live]");
          box.replaceChildren(...(fresh ? fresh.childNodes : doc.body.childNodes));
          open.forEach((id) => { const d = document.getElementById(id); if (d) d.open = true; });
          if (fresh && fresh.dataset.done === "true") { box.dataset.done = "true"; return; }
        }
      } catch (e) {
        // the console restarted or the network blinked: try again at the next tick
      }
      window.setTimeout(tick, interval);
    }
    window.setTimeout(tick, interval);
  }
  document.querySelectorAll("[data-poll]").forEach((box) => {
    if (box.dataset.done !== "true") poll(box);
  });
})();
