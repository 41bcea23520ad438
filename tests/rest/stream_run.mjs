// Streams a run through the edge with the official `openai` npm package and prints what it saw
// as one JSON line: the events' names, the text deltas and the final run's status.
import OpenAI from "openai";

const client = new OpenAI({ apiKey: process.env.OPENAI_API_KEY, baseURL: process.env.OPENAI_BASE_URL, maxRetries: 0 });
const events = [];
const deltas = [];
const stream = client.beta.threads.runs
  .stream(process.env.THREAD_ID, { assistant_id: process.env.ASSISTANT_ID })
  .on("event", (event) => events.push(event.event))
  .on("textDelta", (delta) => deltas.push(delta.value));
const run = await stream.finalRun();
const messages = await client.beta.threads.messages.list(process.env.THREAD_ID);
console.log(JSON.stringify({ events, text: deltas.join(""), status: run.status, runId: run.id,
                             stored: messages.data[0].content[0].text.value }));
