// Every state-changing request goes through send(): it carries the page's CSRF token.
"use strict";
function csrf() { return document.querySelector('meta[name="csrf-token"]').content; }
async function send(method, url, body) {
  const response = await fetch(url, {
    method, credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
    body: body === undefined ? undefined : JSON.stringify(body)});
  if (!response.ok) throw new Error(await response.text());
  return response.headers.get("content-type", "").includes("json") ? response.json() : null;
}
