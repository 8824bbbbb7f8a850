// Webmail's small help; every page works without it.
// - "Select all" ticks every message of the list page.
// - New mail appears in the open list: the server says when a mailbox changed
//   (server-sent events) and the page fetches its list again. A tab out of
//   sight waits until it is looked at, so it never keeps a session alive alone.
"use strict";

function enhanceSelectAll() {
  const all = document.getElementById("select-all");
  if (!all) return;
  all.hidden = false;
  all.addEventListener("change", () => {
    for (const box of document.querySelectorAll('input[name="uid"]')) box.checked = all.checked;
  });
}

function anySelected() {
  return document.querySelector('input[name="uid"]:checked') !== null;
}

async function refreshList(status) {
  const response = await fetch(location.href, { credentials: "same-origin" });
  if (!response.ok || response.redirected) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  const keepList = anySelected();
  for (const region of document.querySelectorAll("[data-live]")) {
    if (keepList && region.dataset.live === "list") continue;
    const replacement = fresh.querySelector(`[data-live="${region.dataset.live}"]`);
    if (replacement) region.replaceWith(document.importNode(replacement, true));
  }
  if (keepList) {
    status.textContent = "New mail has arrived: reload the page to see it.";
  } else {
    enhanceSelectAll();
  }
}

function followChanges() {
  const main = document.querySelector("[data-events]");
  const status = document.getElementById("mail-status");
  if (!main || !status || !window.EventSource) return;
  let pending = false;
  let running = false;
  const refresh = async () => {
    if (document.visibilityState !== "visible") {
      pending = true;
      return;
    }
    if (running) {
      pending = true;
      return;
    }
    running = true;
    pending = false;
    try {
      await refreshList(status);
    } finally {
      running = false;
      if (pending) refresh();
    }
  };
  const events = new EventSource(main.dataset.events);
  events.addEventListener("change", refresh);
  document.addEventListener("visibilitychange", () => {
    if (pending && document.visibilityState === "visible") refresh();
  });
}

enhanceSelectAll();
followChanges();
