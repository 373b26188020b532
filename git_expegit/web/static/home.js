// Home: the Synchronize button (POST /sync) and its one-line result.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("synchronize");
  const result = document.getElementById("sync-result");
  if (!button) return;
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Synchronizing…";
    result.className = "result";
    result.textContent = "";
    let answer;
    try {
      answer = await send("POST", "/sync");
    } catch (e) {
      try { answer = JSON.parse(e.message); } catch { answer = {ok: false, error: e.message}; }
    }
    result.classList.add(answer.ok ? "ok" : "error");
    result.textContent = answer.ok ? answer.message : answer.error;
    if (answer.sync) {
      document.getElementById("last-sync").textContent = answer.sync.text;
      document.getElementById("sync-step").textContent = answer.sync.step;
    }
    button.disabled = false;
    button.textContent = "Synchronize";
  });
});
