// Live updates on every page, from the server-sent events of /events (web/live.py).
//
// The contract: a page marks what the live stream may update, and this script updates it.
//
//   <tr data-execution="FULL-UUID">            an execution's element (a row, a card, a page)
//     <td data-field="state">queued</td>       its text becomes the new state; its classes
//                                              state-<old> are replaced by state-<new>
//     <td data-field="exit_code">-</td>        its text becomes the exit code ("" when none)
//   </tr>
//   The element marked data-execution may itself carry data-field. It also gets
//   data-state="<state>", so a style sheet can colour a whole row ([data-state=failed]).
//   A deleted execution gets the state "removed" (and the class state-removed).
//
//   <span data-count="finished">3</span>       how many executions are in that state
//   <span data-count="total">7</span>          how many there are
//
//   Pages that need more (a row for a new execution, a table to refetch) listen to
//   document.addEventListener("expegit:execution", e => e.detail)   // {id, state, exit_code}
//   document.addEventListener("expegit:counts", e => e.detail)      // {queued: 2, ..., total: 7}
//
// The browser reconnects by itself (after a server restart too); the server then sends what
// changed while it was away.
"use strict";
(function () {
  if (!window.EventSource) return;
  const STATES = ["created", "queued", "running", "finished", "failed", "removed"];

  function fields(element) {
    const inside = Array.from(element.querySelectorAll("[data-field]"));
    return element.hasAttribute("data-field") ? [element, ...inside] : inside;
  }

  function showState(target, state) {
    target.textContent = state;
    for (const s of STATES) target.classList.remove("state-" + s);
    target.classList.add("state-" + state);
  }

  function execution(change) {
    const selector = '[data-execution="' + CSS.escape(change.id) + '"]';
    for (const element of document.querySelectorAll(selector)) {
      element.dataset.state = change.state;
      for (const target of fields(element)) {
        const field = target.dataset.field;
        if (field === "state") showState(target, change.state);
        else if (field === "exit_code") target.textContent = change.exit_code ?? "";
      }
    }
    document.dispatchEvent(new CustomEvent("expegit:execution", {detail: change}));
  }

  function counts(values) {
    for (const element of document.querySelectorAll("[data-count]")) {
      const value = values[element.dataset.count];
      if (value !== undefined) element.textContent = String(value);
    }
    document.dispatchEvent(new CustomEvent("expegit:counts", {detail: values}));
  }

  // The refs the page was read at: the stream sends what changed since (web/live.py).
  const since = document.documentElement.dataset.liveSince;
  const source = new EventSource("/events" + (since ? "?since=" + encodeURIComponent(since) : ""));
  source.addEventListener("execution", (e) => execution(JSON.parse(e.data)));
  source.addEventListener("counts", (e) => counts(JSON.parse(e.data)));
  source.addEventListener("hello", () => document.documentElement.dataset.live = "on");
  source.addEventListener("error", () => document.documentElement.dataset.live = "off");
  // Leaving the page closes the stream at once, rather than when the server next writes.
  window.addEventListener("pagehide", () => source.close());
})();
