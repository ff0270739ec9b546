// The page served at `GET /`, driven in headless Chromium against a running `bertqa serve`.
//
//   BERTQA_URL=http://127.0.0.1:8080 node page.test.mjs
//
// run.sh starts the server and sets BERTQA_URL. CHROMIUM names the browser (default
// /usr/bin/chromium); SCREENSHOT=path.png saves a picture of the page answering a question.

import { after, afterEach, before, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const BASE = (process.env.BERTQA_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
const ORIGIN = new URL(BASE).origin;

let browser;
let page;
/** What went wrong in the page during one test: script errors, console errors, failed requests. */
let trouble;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
});

after(async () => {
  await browser?.close();
});

beforeEach(async () => {
  trouble = [];
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.on("pageerror", (e) => trouble.push(`script error: ${e.message}`));
  page.on("console", (m) => {
    // Chromium logs every failed fetch; the "response" handler below judges those.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) trouble.push(`console: ${m.text()}`);
  });
  page.on("request", (r) => {
    // The page must work offline: nothing but its own server and inline data.
    const url = r.url();
    if (!url.startsWith(ORIGIN + "/") && !url.startsWith("data:")) trouble.push(`external request: ${url}`);
  });
  page.on("response", (r) => {
    // 413 and 422 answer bad questions (tested on purpose); anything else over 400 is a bug,
    // such as a 404 for a favicon.
    if (r.status() >= 400 && ![413, 422].includes(r.status())) trouble.push(`${r.status()} for ${r.url()}`);
  });
});

afterEach(async () => {
  await page.context().close();
  assert.deepEqual(trouble, [], "the page had trouble");
});

/** Loads the page and waits until it has read /info. */
async function open() {
  await page.goto(`${BASE}/`);
  await page.waitForFunction(() => document.getElementById("model-id").textContent !== "…");
}

/** POSTs `body` to the API from here, as a client other than the page. */
async function api(path, body) {
  const response = await fetch(`${BASE}/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.clone().text());
  const data = await response.json();
  return Array.isArray(data) ? data : [data];
}

/**
 * Types `question` and submits it with Enter; returns the JSON body the page sent once the
 * answers are shown.
 */
async function ask(question) {
  await page.fill("#question", "");
  await page.type("#question", question);
  const sent = page.waitForRequest((r) => r.method() === "POST" && r.url().endsWith("question-answering"));
  await page.press("#question", "Enter");
  const body = (await sent).postDataJSON();
  await page.waitForFunction(() => document.getElementById("ask").disabled === false);
  return body;
}

/** The marked text and the number of code points before it in the context box. */
async function marked(box = "#highlighted") {
  return page.$eval(box, (container) => {
    const mark = container.querySelector("mark");
    if (!mark) return null;
    const before = document.createRange();
    before.setStart(container, 0);
    before.setEndBefore(mark);
    return { text: mark.textContent, start: Array.from(before.toString()).length, rank: mark.dataset.rank };
  });
}

/** The code-point offset of `needle` in `text` (what the server's offsets count). */
const codePointIndex = (text, needle) => Array.from(text.slice(0, text.indexOf(needle))).length;

// Emoji (one of them a ZWJ sequence of 3 code points, 5 UTF-16 units), accents and markup come
// before every answer, so UTF-16 offsets would land 7+ characters off.
const CONTEXT =
  "🎉🎉 👩‍💻 <i>Zoë’s</i> café in Göttingen opened in 1998. Its owner, Renée Müller, bakes bread " +
  "every morning before the café opens at seven. The café is closed on Mondays, when Renée visits " +
  "her sister in Hannover.";

test("a typed question is answered and the answer highlighted where the API puts it", async () => {
  await open();
  assert.equal(await page.isHidden("#modes"), true, "no index: the Documents mode stays hidden");
  await page.fill("#context", CONTEXT);
  const sent = await ask("Where does Renée's sister live?");
  assert.equal(sent.inputs.context, CONTEXT);
  assert.equal(sent.inputs.question, "Where does Renée's sister live?");
  assert.equal(sent.parameters.top_k, 3);

  const expected = await api("question-answering", sent);
  assert.ok(expected.length >= 2, "the test needs two answers");
  const chars = Array.from(CONTEXT);
  for (const a of expected) {
    assert.equal(chars.slice(a.start, a.end).join(""), a.answer, "the API's own offsets");
    assert.ok(a.start > 7, "every answer lies after the emoji");
  }

  const mark = await marked();
  assert.deepEqual(mark, { text: expected[0].answer, start: expected[0].start, rank: "1" });
  const rows = await page.$$eval("#answers button.answer", (buttons) =>
    buttons.map((b) => ({
      answer: b.querySelector(".answer-text").textContent,
      score: b.querySelector(".score").textContent,
      pressed: b.getAttribute("aria-pressed"),
    })),
  );
  assert.deepEqual(
    rows,
    expected.map((a, i) => ({ answer: a.answer, score: `score ${a.score.toFixed(4)}`, pressed: String(i === 0) })),
  );
  // Markup in the context is shown as text, never run.
  assert.equal(await page.$$eval("#highlighted i", (l) => l.length), 0);
  assert.match(await page.textContent("#highlighted"), /<i>Zoë’s<\/i>/);
  assert.match(await page.textContent("#status"), /answers? in [\d.]+ ms on the server/);
  assert.equal(await page.isHidden("#error"), true);
});

test("clicking an answer moves the highlight to it and scrolls it into view", async () => {
  await open();
  // A long context: the answers sit far below the top of the context box.
  const filler = "This sentence is only here to push the interesting part down the page.\n".repeat(60);
  const context = filler + CONTEXT;
  await page.fill("#context", context);
  const sent = await ask("When does the café open?");
  const expected = await api("question-answering", sent);
  assert.ok(expected.length >= 2, "the test needs two answers");
  const offset = Array.from(filler).length;
  assert.equal((await marked()).start, expected[0].start);
  assert.ok(expected[0].start >= offset);

  await page.click('#answers button[data-rank="2"]');
  assert.deepEqual(await marked(), { text: expected[1].answer, start: expected[1].start, rank: "2" });
  assert.equal(await page.getAttribute('#answers button[data-rank="2"]', "aria-pressed"), "true");
  assert.equal(await page.getAttribute('#answers button[data-rank="1"]', "aria-pressed"), "false");
  const visible = await page.$eval("#highlighted", (box) => {
    const m = box.querySelector("mark").getBoundingClientRect();
    const b = box.getBoundingClientRect();
    return m.top >= b.top && m.bottom <= b.bottom && m.top >= 0 && m.bottom <= window.innerHeight;
  });
  assert.equal(visible, true, "the marked answer is scrolled into view");
});

test("Ctrl+Enter in the context asks, and earlier questions stay in the history", async () => {
  await open();
  await page.click("#example");
  await page.click("#parameters summary");
  assert.equal(await page.isVisible("#top_k"), true, "the parameters are at hand");
  assert.equal(await page.inputValue("#question"), "How many pretrained models are available in Transformers?");
  const sent = page.waitForRequest((r) => r.method() === "POST");
  await page.press("#context", "Control+Enter");
  const first = (await sent).postDataJSON();
  await page.waitForSelector("#answers button.answer");
  const firstAnswers = await api("question-answering", first);
  assert.equal((await marked()).text, firstAnswers[0].answer);
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

  await ask("Which frameworks does it work with?");
  const history = await page.$$eval("#history li button", (l) => l.map((b) => b.textContent));
  assert.deepEqual(history, ["Which frameworks does it work with?", first.inputs.question]);
  await page.click("#history li:nth-child(2) button");
  assert.equal(await page.inputValue("#question"), first.inputs.question);
  assert.deepEqual(await marked(), { text: firstAnswers[0].answer, start: firstAnswers[0].start, rank: "1" });

});

test("bad input shows the server's error, and the page keeps working", async () => {
  await open();
  await page.fill("#context", CONTEXT);
  await ask("Who owns the café?");
  assert.equal(await page.isVisible("#results"), true);
  await ask("   ");
  assert.equal(await page.isVisible("#error"), true);
  const message = await page.textContent("#error");
  assert.match(message, /422 validation/);
  assert.match(message, /`inputs\.question`: must not be empty/);
  assert.equal(await page.isHidden("#results"), true, "the last question's answers are not shown as this one's");

  await page.click("#parameters summary");
  await page.fill("#top_k", "0");
  await ask("Who owns the café?");
  assert.match(await page.textContent("#error"), /`parameters\.top_k`: must be at least 1/);

  await page.fill("#top_k", "1");
  await page.fill("#max_seq_len", "");
  await page.uncheck("#align_to_words");
  const sent = await ask("Who owns the café?");
  assert.deepEqual(sent.parameters, { top_k: 1, handle_impossible_answer: false, align_to_words: false });
  assert.equal(await page.isHidden("#error"), true, "the error is cleared by an answer");
  const [expected] = await api("question-answering", sent);
  assert.deepEqual(await marked(), { text: expected.answer, start: expected.start, rank: "1" });
});

test("a context over the server's limit and a lost server are reported, not crashed on", async () => {
  await open();
  const info = await (await fetch(`${BASE}/info`)).json();
  const limit = info.max_context_chars;
  const payloadChars = Math.floor(info.payload_limit / 2) + 1;
  assert.ok(limit + 200 < info.payload_limit && payloadChars <= limit,
    "run.sh starts the server with limits that allow both cases below");
  assert.match(await page.textContent("#context-count"), /0 of at most/);
  // One character over the limit, in bytes under the payload limit.
  await page.fill("#context", "x".repeat(limit + 1));
  assert.match(await page.textContent("#context-count"), new RegExp(`${(limit + 1).toLocaleString("en")} of`));
  assert.equal(await page.$eval("#context-count", (c) => c.classList.contains("over")), true);
  await ask("Anything?");
  assert.match(await page.textContent("#error"), /422 validation: `inputs\.context`: \d+ characters, over the server's limit/);
  // Two-byte characters: under the character limit, over the payload limit.
  await page.fill("#context", "é".repeat(payloadChars));
  assert.equal(await page.$eval("#context-count", (c) => c.classList.contains("over")), false);
  await ask("Anything?");
  assert.match(await page.textContent("#error"), /413 payload_too_large: the body is over the server's limit/);

  await page.fill("#context", CONTEXT);
  await page.route("**/question-answering", (route) => route.abort("connectionrefused"));
  await ask("Who owns the café?");
  assert.match(await page.textContent("#error"), /Cannot reach the server/);
  assert.equal(await page.isEnabled("#ask"), true, "the form can be used again");
  trouble = trouble.filter((t) => !t.includes("ERR_CONNECTION_REFUSED"));
});

test("with an index, a Documents mode asks over it and shows the documents", async () => {
  // The index endpoint is answered here in the shape the server gives it, so that the page's
  // half of the contract is tested whether or not this server was started with --index.
  const info = await (await fetch(`${BASE}/info`)).json();
  const passage = "Der Fluss 🌊 Leine fließt durch Hannover, wo Renée’s Schwester wohnt.";
  const river = 1000 + codePointIndex(passage, "Hannover");
  const cafe = codePointIndex(CONTEXT, "Göttingen");
  const answers = [
    {
      answer: "Hannover",
      score: 0.8125,
      start: river,
      end: river + 8,
      document: { id: "rivers.md", title: "Rivers of Lower Saxony", path: "docs/rivers.md" },
      passage: { text: passage, start: 1000, end: 1000 + Array.from(passage).length },
    },
    {
      answer: "Göttingen",
      score: 0.0625,
      start: cafe,
      end: cafe + 9,
      document: { id: "cafe.txt", title: "", path: "notes/cafe.txt" },
      passage: { text: CONTEXT, start: 0, end: Array.from(CONTEXT).length },
    },
  ];
  await page.route("**/info", (route) =>
    route.fulfill({ json: { ...info, index: { documents: 2, passages: 7 } } }),
  );
  let sentBody;
  await page.route("**/documents/question-answering", (route) => {
    sentBody = route.request().postDataJSON();
    route.fulfill({ json: answers });
  });
  await open();
  assert.equal(await page.isVisible("#modes"), true);
  await page.click("#tab-documents");
  assert.equal(await page.isHidden("#context"), true, "no context to paste in Documents mode");
  assert.match(await page.textContent("#index-summary"), /documents: 2, passages: 7/);
  await page.click("#parameters summary");
  await page.fill("#passages", "5");
  await page.fill("#question", "Where does Renée's sister live?");
  await page.click("#ask");
  await page.waitForSelector("#answers .doc-card");
  assert.deepEqual(sentBody, { inputs: { question: "Where does Renée's sister live?" }, parameters: { top_k: 3, passages: 5 } });
  const cards = await page.$$eval("#answers .doc-card", (l) =>
    l.map((c) => ({
      answer: c.querySelector(".answer-text").textContent,
      source: c.querySelector(".where").textContent,
      marked: c.querySelector("mark")?.textContent,
    })),
  );
  assert.deepEqual(cards, [
    { answer: "Hannover", source: `Rivers of Lower Saxony · docs/rivers.md · characters ${river}–${river + 8}`, marked: "Hannover" },
    { answer: "Göttingen", source: `cafe.txt · notes/cafe.txt · characters ${cafe}–${cafe + 9}`, marked: "Göttingen" },
  ]);
  // Back to asking about a pasted passage.
  await page.click("#tab-passage");
  assert.equal(await page.isVisible("#context"), true);
});
