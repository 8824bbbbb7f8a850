// Address completion on the compose page: the To, Cc and Bcc fields suggest the
// people this account has written to (GET /mail/contacts?q=...), through each
// field's <datalist>, so the browser shows the choices and keyboards work as usual.
// The form works without this script.

// Wait this long after the last keystroke before asking: one request per pause.
const PAUSE_MS = 200;
// Fewer letters than this match too many addresses to help.
const MIN_LETTERS = 2;

for (const input of document.querySelectorAll("input[data-contacts]")) {
  const list = document.getElementById(input.getAttribute("list"));
  let timer = 0;
  input.addEventListener("input", () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => suggest(input, list), PAUSE_MS);
  });
}

async function suggest(input, list) {
  const typed = input.value;
  // Only the address being typed, after the last comma, is completed; an
  // option holds the whole field so that choosing it keeps the addresses before.
  const cut = typed.lastIndexOf(",") + 1;
  const before = typed.slice(0, cut);
  const word = typed.slice(cut).trim();
  if (word.length < MIN_LETTERS) {
    list.replaceChildren();
    return;
  }
  let found;
  try {
    const url = `${input.dataset.contacts}?q=${encodeURIComponent(word)}`;
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    found = await response.json();
  } catch {
    return; // offline or logged out: the field still takes typed addresses
  }
  if (input.value !== typed) return; // typed on meanwhile: a newer answer is coming
  const prefix = before ? `${before.trimEnd()} ` : "";
  list.replaceChildren(
    ...found.map((contact) => {
      const option = document.createElement("option");
      option.value = `${prefix}${contact.label}, `;
      return option;
    }),
  );
}
