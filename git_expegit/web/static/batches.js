// The new batch form (/batches/new) and the tasks page (/tasks).
//
// The form is never submitted by the browser: Enter in a field only refreshes the preview
// (the original submitted half a form on Enter). The Create button is the only way to
// submit, and it is enabled only while the preview shown is valid and is the preview of
// what the fields hold now.
"use strict";

function batchForm(form) {
  const $ = (id) => document.getElementById(id);
  const create = $("create"), result = $("create-result");
  const count = $("preview-count"), list = $("preview-list");
  const error = $("preview-error"), more = $("preview-more");
  let asked = 0;       // the number of the last preview asked for
  let shownFor = null; // the inputs of the preview shown, when it is valid

  const inputs = () => ({expression: $("expression").value, repetitions: $("repetitions").value});
  const same = (a, b) => a && b && a.expression === b.expression && a.repetitions === b.repetitions;
  const ready = () => { create.disabled = !same(shownFor, inputs()) || !$("commit").value; };

  async function refresh() {
    const mine = ++asked, wanted = inputs();
    shownFor = null;
    ready();
    const query = new URLSearchParams(wanted);
    let answer;
    try {
      const response = await fetch("/batches/preview?" + query, {credentials: "same-origin"});
      answer = await response.json();
    } catch (e) {
      answer = {ok: false, error: "the preview failed: " + e.message};
    }
    if (mine !== asked) return; // a newer preview is on its way
    list.replaceChildren();
    error.hidden = answer.ok;
    more.hidden = true;
    if (!answer.ok) {
      error.textContent = answer.error;
      count.textContent = "–";
      ready();
      return;
    }
    count.textContent = answer.count + (answer.count === 1 ? " execution" : " executions");
    for (const text of answer.strings) {
      const item = document.createElement("li");
      const code = document.createElement("code");
      code.textContent = text;
      if (text === "") { code.textContent = "(no parameters)"; code.className = "muted"; }
      item.append(code);
      list.append(item);
    }
    if (answer.count > answer.strings.length) {
      more.hidden = false;
      more.textContent = "… and " + (answer.count - answer.strings.length) + " more";
    }
    shownFor = wanted;
    ready();
  }

  let timer = null;
  const soon = () => { clearTimeout(timer); shownFor = null; ready(); timer = setTimeout(refresh, 200); };
  for (const id of ["expression", "repetitions"]) {
    $(id).addEventListener("input", soon);
    $(id).addEventListener("change", soon);
  }
  $("commit").addEventListener("change", ready);
  // Enter: never a submission, and never a line break in the expression (parameters are
  // stored on one line): the preview is refreshed instead.
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.target.tagName !== "BUTTON" && e.target.tagName !== "SELECT") {
      e.preventDefault();
      clearTimeout(timer);
      refresh();
    }
  });
  form.addEventListener("submit", (e) => e.preventDefault());

  create.addEventListener("click", async () => {
    if (!same(shownFor, inputs())) return;
    create.disabled = true;
    result.className = "result";
    result.textContent = "Creating…";
    const body = {commit: $("commit").value, profile: $("profile").value,
                  repetitions: $("repetitions").value, expression: $("expression").value,
                  name: $("name").value};
    let answer;
    try {
      answer = await send("POST", "/batches", body);
    } catch (e) {
      try { answer = JSON.parse(e.message); } catch { answer = {ok: false, error: e.message}; }
    }
    if (!answer.ok) {
      result.classList.add("error");
      result.textContent = answer.error;
      ready();
      return;
    }
    result.classList.add("ok");
    result.textContent = "Batch " + answer.batch + ": " + answer.count + " execution(s) queued. ";
    const link = document.createElement("a");
    link.href = "/tasks";
    link.textContent = "See the tasks";
    result.append(link);
    form.dataset.created = answer.batch;
  });

  refresh();
}

// Tasks: the live stream updates the states in place; rows come and go with the queue, so
// the tables are fetched again (at most every half second) when an execution changes, and
// every 5 s for the agent's status.
function tasksPage(box) {
  let pending = null;
  async function reload() {
    pending = null;
    try {
      const response = await fetch(location.pathname, {credentials: "same-origin"});
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("tasks-live");
      if (fresh) box.replaceChildren(...fresh.childNodes);
    } catch (e) { /* the server is away: the next event or tick tries again */ }
  }
  const soon = () => { if (!pending) pending = setTimeout(reload, 500); };
  document.addEventListener("expegit:execution", soon);
  setInterval(soon, 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("batch-form");
  if (form) batchForm(form);
  const box = document.getElementById("tasks-live");
  if (box) tasksPage(box);
});
