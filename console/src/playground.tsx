// Chat with a served model through the gateway's /v1/chat/completions, streamed; a
// fine-tune can be compared side by side with its base model (the `parent` /v1/models
// names), each answering the same conversation with the same settings.
import { useRef, useState } from "preact/hooks";
import { getJSON, postStream } from "./api";
import type { OnError } from "./main";
import { useFocusHeading, usePoll } from "./poll";
import type { List, Model } from "./types";

interface Turn {
  role: "user" | "assistant";
  content: string;
}

interface Column {
  model: string;
  turns: Turn[];
  problem: string | null;
}

interface Chunk {
  choices?: { delta?: { content?: string | null } }[];
}

interface Settings {
  temperature: number;
  max_tokens: number;
  top_p: number;
}

function NumberField(props: {
  id: string;
  label: string;
  value: number;
  min: number;
  max: number;
  step: number;
  onChange: (value: number) => void;
}) {
  return (
    <>
      <label for={props.id}>{props.label}</label>
      <input id={props.id} type="number" min={props.min} max={props.max} step={props.step} value={props.value}
        onInput={(e) => props.onChange(Number((e.target as HTMLInputElement).value))} />
    </>
  );
}

function Transcript({ column, busy }: { column: Column; busy: boolean }) {
  return (
    <section class="column" aria-label={`Answers of ${column.model}`} data-model={column.model}>
      <h2>{column.model}</h2>
      <ol class="transcript" aria-live="polite">
        {column.turns.map((t, i) => (
          <li key={i} class={`turn turn-${t.role}`} data-role={t.role}>
            <strong>{t.role === "user" ? "You" : column.model}</strong>
            <p>{t.content || (busy ? "…" : "")}</p>
          </li>
        ))}
      </ol>
      {column.problem && <p role="alert" class="error">{column.problem}</p>}
    </section>
  );
}

export function Playground({ onError }: { onError: OnError }) {
  const [models, setModels] = useState<Model[]>([]);
  const [model, setModel] = useState("");
  const [compare, setCompare] = useState(false);
  const [columns, setColumns] = useState<Column[]>([]);
  const [prompt, setPrompt] = useState("");
  const [settings, setSettings] = useState<Settings>({ temperature: 0.7, max_tokens: 128, top_p: 1 });
  const [busy, setBusy] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const heading = useFocusHeading<HTMLHeadingElement>("playground");

  usePoll(
    async (signal) => {
      try {
        // The tuned models first: they are what a user comes here to try.
        const listed = (await getJSON<List<Model>>("/v1/models", signal)).data;
        listed.sort((a, b) => Number(b.id.startsWith("ft:")) - Number(a.id.startsWith("ft:")));
        setModels(listed);
        setModel((current) => current || listed[0]?.id || "");
      } catch (error) {
        onError(error);
      }
    },
    10000,
    [],
  );

  const parent = models.find((m) => m.id === model)?.parent ?? null;
  const wanted = compare && parent ? [model, parent] : [model];
  // A new model or comparison starts a new conversation.
  const shown = columns.map((c) => c.model).join("\n") === wanted.join("\n") ? columns : [];

  async function stream(index: number, asked: Turn[], signal: AbortSignal) {
    const name = wanted[index];
    let answer = "";
    const update = (change: Partial<Column>) =>
      setColumns((now) => now.map((c, i) => (i === index ? { ...c, ...change } : c)));
    try {
      await postStream(
        "/v1/chat/completions",
        { model: name, messages: asked, stream: true, ...settings },
        (data) => {
          answer += (data as Chunk).choices?.[0]?.delta?.content ?? "";
          update({ turns: [...asked, { role: "assistant", content: answer }] });
        },
        signal,
      );
    } catch (error) {
      if (error instanceof Error && error.name !== "AbortError") update({ problem: error.message });
      onError(error);
    }
  }

  async function send(e: Event) {
    e.preventDefault();
    if (!prompt.trim() || !model) return;
    const question: Turn = { role: "user", content: prompt.trim() };
    const asked = wanted.map((_, i) => [...(shown[i]?.turns ?? []), question]);
    setColumns(wanted.map((name, i) => ({ model: name, turns: [...asked[i], { role: "assistant", content: "" }], problem: null })));
    setPrompt("");
    setBusy(true);
    abort.current = new AbortController();
    const signal = abort.current.signal;
    await Promise.all(asked.map((turns, i) => stream(i, turns, signal)));
    setBusy(false);
    abort.current = null;
  }

  const set = (key: keyof Settings) => (value: number) => setSettings((s) => ({ ...s, [key]: value }));
  return (
    <section aria-labelledby="playground-heading">
      <h1 id="playground-heading" tabIndex={-1} ref={heading}>
        Playground
      </h1>
      <form class="playground" onSubmit={send}>
        <div class="settings">
          <label for="pg-model">Model</label>
          <select id="pg-model" value={model} onChange={(e) => setModel((e.target as HTMLSelectElement).value)}>
            {models.map((m) => (
              <option key={m.id} value={m.id}>
                {m.id}
              </option>
            ))}
          </select>
          <NumberField id="pg-temperature" label="Temperature" min={0} max={2} step={0.1}
            value={settings.temperature} onChange={set("temperature")} />
          <NumberField id="pg-top-p" label="Top p" min={0} max={1} step={0.05} value={settings.top_p}
            onChange={set("top_p")} />
          <NumberField id="pg-max-tokens" label="Max tokens" min={1} max={4096} step={1}
            value={settings.max_tokens} onChange={set("max_tokens")} />
          <label for="pg-compare">Compare with its base model</label>
          <span>
            <input id="pg-compare" type="checkbox" checked={compare} disabled={!parent}
              aria-describedby="pg-compare-help" onChange={(e) => setCompare((e.target as HTMLInputElement).checked)} />{" "}
            <span id="pg-compare-help" class="help">
              {parent ? `side by side with ${parent}` : "only a fine-tune has a base model"}
            </span>
          </span>
        </div>
        <div class={wanted.length > 1 ? "columns two" : "columns"}>
          {shown.map((column) => (
            <Transcript key={column.model} column={column} busy={busy} />
          ))}
        </div>
        <label for="pg-prompt">Message</label>
        <textarea id="pg-prompt" rows={3} value={prompt}
          onInput={(e) => setPrompt((e.target as HTMLTextAreaElement).value)} />
        <div class="actions">
          <button type="submit" disabled={busy || !model}>Send</button>
          {busy && <button type="button" onClick={() => abort.current?.abort()}>Stop</button>}
          <button type="button" disabled={busy} onClick={() => setColumns([])}>Clear</button>
        </div>
      </form>
    </section>
  );
}
