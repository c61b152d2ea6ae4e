// The local chat page: talks to the functions' URLs the way the frontend does
// (bearer token, fetch with a streamed body, CORS from this page's own origin).
// The stream protocol is SPEC section 3: lines `data: <json>`, tokens appended,
// the stream ends at `done`; other lines are skipped.
"use strict";

const S = {
  api: "", // e.g. http://127.0.0.1:9000/lambda-url
  token: "",
  conversations: [],
  cursor: null,
  current: null, // the open conversation, with its messages
  live: null, // {id, controller, bubble}: the answer this page is reading
  renaming: null, // {id, value}: a title being edited survives list refreshes
  pending: 0, // requests in flight (body[data-pending], for tests and the curious)
};

const $ = (id) => document.getElementById(id);

function url(fn, path) {
  return `${S.api}/${fn}/api/conversations${path}`;
}

function call(fn, method, path, body, signal) {
  const init = { method, headers: { authorization: `Bearer ${S.token}` }, signal };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(url(fn, path), init);
}

// Counts a piece of work in flight around `promise`.
async function tracked(promise) {
  document.body.dataset.pending = String(++S.pending);
  try {
    return await promise;
  } finally {
    document.body.dataset.pending = String(--S.pending);
  }
}

// A refused request as the user should read it: status and the `detail`.
async function refusal(resp) {
  let detail = resp.statusText;
  try {
    const body = await resp.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    // not JSON: keep the status text
  }
  // A per-user limit says when to try again (exposed to the page by CORS).
  const wait = resp.headers.get("retry-after");
  return wait ? `${resp.status}: ${detail} (try again in ${wait} s)` : `${resp.status}: ${detail}`;
}

function json(fn, method, path, body) {
  return tracked(
    (async () => {
      const resp = await call(fn, method, path, body);
      if (!resp.ok) throw new Error(await refusal(resp));
      return resp.status === 204 ? null : resp.json();
    })(),
  );
}

function notice(text) {
  $("notice").textContent = text || "";
  $("notice").hidden = !text;
}

function status(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

// Reads an event stream: calls onEvent with each `data:` JSON object, stops at
// `done` (its event is returned) or at the end of the body (null).
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      let event;
      try {
        event = JSON.parse(line.slice(5));
      } catch (_) {
        continue;
      }
      if (event === null || typeof event !== "object") continue;
      if (event.done) {
        reader.cancel().catch(() => {});
        return event;
      }
      onEvent(event);
    }
  }
}

// ---- the conversation list ----

async function loadConversations(more) {
  const query = `?limit=50${more && S.cursor ? `&cursor=${encodeURIComponent(S.cursor)}` : ""}`;
  const page = await json("conversations", "GET", query);
  S.conversations = more ? S.conversations.concat(page.items) : page.items;
  S.cursor = page.next_cursor || null;
  renderConversations();
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  for (const c of S.conversations) {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    if (S.current && S.current.id === c.id) li.classList.add("active");
    const title = document.createElement("a");
    title.className = "title";
    title.textContent = c.title;
    title.title = c.title;
    title.onclick = () => open(c.id);
    if (S.renaming && S.renaming.id === c.id) li.append(renameInput(c));
    const rename = document.createElement("button");
    rename.className = "rename";
    rename.type = "button";
    rename.textContent = "✎";
    rename.title = "Rename";
    rename.onclick = () => startRename(c);
    const del = document.createElement("button");
    del.className = "delete";
    del.type = "button";
    del.textContent = "✕";
    del.title = "Delete";
    del.onclick = () => removeConversation(del, c);
    if (!li.firstChild) li.append(title);
    li.append(rename, del);
    list.append(li);
  }
  $("more").hidden = !S.cursor;
}

function startRename(c) {
  S.renaming = { id: c.id, value: c.title };
  renderConversations();
}

function renameInput(c) {
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = S.renaming.value;
  input.oninput = () => (S.renaming.value = input.value);
  input.onkeydown = async (e) => {
    if (e.key === "Escape") {
      S.renaming = null;
      return renderConversations();
    }
    if (e.key !== "Enter") return;
    e.preventDefault();
    S.renaming = null;
    try {
      const updated = await json("conversations", "PUT", `/${c.id}`, { title: input.value });
      Object.assign(c, updated);
      if (S.current && S.current.id === c.id) {
        S.current.title = updated.title;
        $("conversation-title").textContent = updated.title;
      }
      notice("");
    } catch (err) {
      notice(`rename failed: ${err.message}`);
    }
    await loadConversations().catch(() => renderConversations());
  };
  // Focus once it is in the document.
  setTimeout(() => input === document.activeElement || input.focus());
  return input;
}

// Two clicks: the first arms the button, the second deletes.
async function removeConversation(button, c) {
  if (!button.classList.contains("armed")) {
    button.classList.add("armed");
    button.textContent = "Delete?";
    setTimeout(() => {
      button.classList.remove("armed");
      button.textContent = "✕";
    }, 4000);
    return;
  }
  try {
    if (S.current && S.current.id === c.id) {
      detach();
      showConversation(null);
    }
    await json("conversations", "DELETE", `/${c.id}`);
    notice("");
  } catch (err) {
    notice(`delete failed: ${err.message}`);
  }
  await loadConversations();
}

async function createConversation() {
  const c = await json("conversations", "POST", "", {});
  await loadConversations();
  await open(c.id);
  return c;
}

// ---- one conversation ----

async function open(id) {
  if (S.live && S.live.id === id) return; // already showing it, streaming
  // Leaving a streaming answer only stops reading it: the function goes on, and
  // coming back re-attaches.
  detach();
  let conversation;
  try {
    conversation = await json("conversations", "GET", `/${id}`);
  } catch (err) {
    notice(`could not open the conversation: ${err.message}`);
    showConversation(null);
    return;
  }
  showConversation(conversation);
  const last = conversation.messages[conversation.messages.length - 1];
  // A live answer (status "streaming"): re-attach to it.
  if (last && last.role === "assistant" && last.status === "streaming" && !S.live) {
    await resume(conversation.id, bubbleOf(last.id));
  }
}

function showConversation(conversation) {
  S.current = conversation;
  history.replaceState(null, "", conversation ? `#${conversation.id}` : location.pathname + location.search);
  $("conversation-title").textContent = conversation ? conversation.title : "No conversation open";
  const box = $("messages");
  box.replaceChildren();
  if (conversation) {
    for (const m of conversation.messages) box.append(bubble(m.role, m.content, m.status, m.id));
  }
  renderConversations();
  renderControls();
}

function bubble(role, text, state, id) {
  const div = document.createElement("div");
  div.className = "msg";
  div.dataset.role = role;
  if (id) div.dataset.id = id;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  const stateEl = document.createElement("span");
  stateEl.className = "state";
  meta.append(stateEl);
  div.append(label, body, meta);
  setState(div, state || "complete");
  return div;
}

function bubbleOf(id) {
  return document.querySelector(`#messages .msg[data-id="${CSS.escape(id)}"]`);
}

function setState(div, state, detail) {
  div.dataset.status = state;
  const text = { complete: "", streaming: "streaming…" }[state];
  div.querySelector(".state").textContent = detail || (text === undefined ? state : text);
}

// Regenerate sits on the conversation's last turn when nothing is live.
function renderControls() {
  for (const b of document.querySelectorAll("#messages .actions")) b.remove();
  const live = !!S.live;
  $("send").disabled = live;
  $("stop").hidden = !live;
  if (!S.current || live) return;
  const messages = S.current.messages;
  const last = messages[messages.length - 1];
  if (!last || last.status === "streaming") return;
  const actions = document.createElement("span");
  actions.className = "actions";
  const regen = document.createElement("button");
  regen.type = "button";
  regen.className = "regenerate";
  regen.textContent = last.role === "assistant" ? "Regenerate" : "Answer";
  regen.onclick = regenerate;
  actions.append(regen);
  const lastBubble = $("messages").lastElementChild;
  if (lastBubble) lastBubble.querySelector(".meta").append(actions);
}

async function refresh() {
  if (!S.current) return;
  const id = S.current.id;
  try {
    const conversation = await json("conversations", "GET", `/${id}`);
    if (S.current && S.current.id === id && !S.live) showConversation(conversation);
  } catch (err) {
    notice(`could not reload the conversation: ${err.message}`);
  }
  await loadConversations().catch(() => {});
}

// ---- streams: send, regenerate, resume, stop ----

// Reads one answer's stream into `div`; `fresh` replaces its text on the first token
// (a resumed stream starts with the whole text so far).
async function follow(id, resp, div, controller, fresh) {
  S.live = { id, controller, bubble: div };
  renderControls();
  const body = div.querySelector(".text");
  let failure = null;
  let final = null;
  try {
    final = await readEvents(resp, (event) => {
      if (typeof event.token === "string") {
        if (fresh) {
          body.textContent = "";
          fresh = false;
        }
        body.textContent += event.token;
        body.scrollIntoView({ block: "end" });
      } else if (typeof event.error === "string") {
        failure = event.status_code ? `${event.error} (upstream status ${event.status_code})` : event.error;
      }
    });
  } catch (err) {
    if (controller.signal.aborted) return; // left for another conversation
    failure = `stream broke: ${err.message}`;
  }
  if (S.live && S.live.controller === controller) S.live = null;
  if (failure) {
    setState(div, "failed", `error: ${failure}`);
    notice(`answer failed: ${failure}`);
  } else if (final && final.stopped) {
    setState(div, "stopped");
  } else if (final) {
    setState(div, "complete");
  } else {
    setState(div, "failed", "error: the stream ended without done");
    notice("answer failed: the stream ended without done");
  }
  renderControls();
  await refresh();
}

function detach() {
  if (!S.live) return;
  S.live.controller.abort();
  S.live = null;
}

async function startStream(fn, path, body, div) {
  const id = S.current.id;
  const controller = new AbortController();
  S.live = { id, controller, bubble: div };
  renderControls();
  let resp;
  try {
    resp = await call(fn, "POST", `/${id}${path}`, body, controller.signal);
  } catch (err) {
    S.live = null;
    setState(div, "failed", "error: request failed");
    notice(`request failed (network or CORS): ${err.message}`);
    renderControls();
    return;
  }
  if (!resp.ok) {
    S.live = null;
    const why = await refusal(resp);
    setState(div, "failed", `error: ${why}`);
    notice(why);
    renderControls();
    return;
  }
  await follow(id, resp, div, controller, false);
}

async function send(content) {
  if (!S.current) await createConversation();
  notice("");
  const box = $("messages");
  box.append(bubble("user", content, "complete"));
  const answer = bubble("assistant", "", "streaming");
  box.append(answer);
  answer.scrollIntoView({ block: "end" });
  await startStream("send", "/messages", { content }, answer);
}

async function regenerate() {
  notice("");
  const box = $("messages");
  const last = box.lastElementChild;
  // The old answer is replaced only once the new one is complete: hide it meanwhile.
  if (last && last.dataset.role === "assistant") last.hidden = true;
  const answer = bubble("assistant", "", "streaming");
  box.append(answer);
  await startStream("regenerate", "/regenerate", {}, answer);
}

async function resume(id, div) {
  const controller = new AbortController();
  let resp;
  try {
    resp = await call("send", "GET", `/${id}/stream`, undefined, controller.signal);
  } catch (err) {
    notice(`resume failed (network or CORS): ${err.message}`);
    return;
  }
  if (resp.status === 204) return refresh(); // it ended meanwhile
  if (!resp.ok) {
    notice(`resume failed: ${await refusal(resp)}`);
    return;
  }
  div.dataset.resumed = "true";
  document.body.dataset.resumed = String(Number(document.body.dataset.resumed || 0) + 1);
  await follow(id, resp, div, controller, true);
}

async function stop() {
  if (!S.live) return;
  $("stop").disabled = true;
  try {
    const resp = await call("conversations", "POST", `/${S.live.id}/stop`);
    if (!resp.ok) notice(`stop failed: ${await refusal(resp)}`);
  } catch (err) {
    notice(`stop failed (network or CORS): ${err.message}`);
  } finally {
    $("stop").disabled = false;
  }
  // 202: the stream ends `stopped` by itself; 204: nothing was live any more.
}

// ---- start ----

async function boot() {
  $("new-chat").onclick = () => createConversation().catch((err) => notice(`create failed: ${err.message}`));
  $("more").onclick = () => loadConversations(true).catch((err) => notice(err.message));
  $("stop").onclick = stop;
  $("composer").onsubmit = (e) => {
    e.preventDefault();
    const content = $("input").value.trim();
    if (!content || S.live) return;
    $("input").value = "";
    send(content).catch((err) => notice(err.message));
  };
  $("input").onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  };
  try {
    // The token comes from this page's own server (a fresh one per load).
    const config = await (await fetch(`config.json${location.search}`)).json();
    S.api = config.functions_url;
    S.token = config.token;
    await loadConversations();
  } catch (err) {
    status("error", `could not reach the local stack: ${err.message}`);
    return;
  }
  status("ready", `functions at ${S.api}`);
  const id = location.hash.slice(1);
  if (id) await open(id);
}

boot();
