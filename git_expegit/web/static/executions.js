// The executions table and an execution's report: select, reschedule, delete.
// Requests go through app.js's send() (it carries the CSRF token).
"use strict";
// Live (static/live.js): a row's state, colour and exit code, and the report's, follow the
// execution's changes; a finished run whose exit code is not 0 shows as failed.
document.addEventListener("expegit:execution", event => {
  const change = event.detail;
  const outcome = change.state === "finished" && ![null, undefined, "0"].includes(change.exit_code)
    ? "failed" : change.state;
  const id = CSS.escape(change.id);
  for (const row of document.querySelectorAll(`tr.ex-row[data-id="${id}"]`)) {
    row.className = row.className.replace(/\bout-\S+/, "out-" + outcome);
    const exit = row.querySelector(".ex-exit");
    if (exit) exit.textContent = change.exit_code ?? "";
  }
  for (const pill of document.querySelectorAll(`tr.ex-row[data-id="${id}"] .pill, .pill[data-id="${id}"]`)) {
    pill.className = "pill ex-" + outcome;
    pill.textContent = change.state;
  }
  for (const exit of document.querySelectorAll(`.ex-exit[data-id="${id}"]`)) {
    exit.textContent = change.exit_code ?? "";
  }
});

(function () {
  const actions = document.getElementById("ex-actions");
  if (!actions) return;
  const single = actions.dataset.id;  // set on a report: the one execution
  const picks = () => Array.from(document.querySelectorAll("input.ex-pick"));
  const chosen = () => single ? [single] : picks().filter(b => b.checked).map(b => b.value);
  const message = document.getElementById("ex-message");
  const reschedule = document.getElementById("ex-reschedule");
  const remove = document.getElementById("ex-delete");

  function say(text, bad) {
    message.textContent = text;
    message.classList.toggle("bad", !!bad);
  }

  function refresh() {
    if (single) return;
    const n = chosen().length;
    document.getElementById("ex-selected").textContent = `${n} selected`;
    reschedule.disabled = remove.disabled = n === 0;
    picks().forEach(b => b.closest("tr").classList.toggle("picked", b.checked));
    const all = document.getElementById("ex-all");
    all.checked = n > 0 && n === picks().length;
    all.indeterminate = n > 0 && n < picks().length;
  }

  function reason(error) {
    try { return JSON.parse(error.message).error || error.message; }
    catch (_) { return error.message; }
  }

  async function act(button, url, body, done) {
    reschedule.disabled = remove.disabled = true;
    say("working…");
    try {
      const answer = await send("POST", url, body);
      done(answer);
    } catch (error) {
      say(reason(error), true);
      reschedule.disabled = remove.disabled = false;
      refresh();
    }
  }

  if (!single) {
    document.getElementById("ex-all").addEventListener("change", event => {
      picks().forEach(b => { b.checked = event.target.checked; });
      refresh();
    });
    picks().forEach(b => b.addEventListener("change", refresh));
    refresh();
  }

  reschedule.addEventListener("click", () => {
    const profile = document.getElementById("ex-profile").value;
    act(reschedule, "/executions/reschedule", {ids: chosen(), profile}, answer => {
      say(`queued ${answer.rescheduled} execution(s) again`);
      window.location.reload();
    });
  });

  remove.addEventListener("click", () => {
    const ids = chosen();
    const what = ids.length === 1 ? `execution ${ids[0].slice(0, 8)}` : `${ids.length} executions`;
    if (!window.confirm(`Delete ${what}? Runs under way are stopped; git's history keeps them.`)) return;
    act(remove, "/executions/delete", {ids}, answer => {
      say(`deleted ${answer.deleted} execution(s)`);
      if (single) window.location.assign("/executions");
      else window.location.reload();
    });
  });
})();
