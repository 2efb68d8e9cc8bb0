// Chat with a served model through the gateway's /v1/chat/completions, streamed.
import { useRef, useState } from "preact/hooks";
import { getJSON, postStream } from "./api";
import type { OnError } from "./main";
import { useFocusHeading, usePoll } from "./poll";
import type { List, Model } from "./types";

interface Turn {
  role: "user" | "assistant";
  content: string;
}

interface Chunk {
  choices?: { delta?: { content?: string | null } }[];
}

export function Playground({ onError }: { onError: OnError }) {
  const [models, setModels] = useState<Model[]>([]);
  const [model, setModel] = useState("");
  const [turns, setTurns] = useState<Turn[]>([]);
  const [prompt, setPrompt] = useState("");
  const [temperature, setTemperature] = useState(0.7);
  const [maxTokens, setMaxTokens] = useState(128);
  const [topP, setTopP] = useState(1);
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);
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

  async function send(e: Event) {
    e.preventDefault();
    if (!prompt.trim() || !model) return;
    const asked: Turn[] = [...turns, { role: "user", content: prompt.trim() }];
    setTurns([...asked, { role: "assistant", content: "" }]);
    setPrompt("");
    setProblem(null);
    setBusy(true);
    abort.current = new AbortController();
    let answer = "";
    try {
      await postStream(
        "/v1/chat/completions",
        { model, messages: asked, stream: true, temperature, max_tokens: maxTokens, top_p: topP },
        (data) => {
          answer += (data as Chunk).choices?.[0]?.delta?.content ?? "";
          setTurns([...asked, { role: "assistant", content: answer }]);
        },
        abort.current.signal,
      );
    } catch (error) {
      if (error instanceof Error && error.name !== "AbortError") setProblem(error.message);
      onError(error);
    } finally {
      setBusy(false);
      abort.current = null;
    }
  }

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
          <label for="pg-temperature">Temperature</label>
          <input id="pg-temperature" type="number" min="0" max="2" step="0.1" value={temperature}
            onInput={(e) => setTemperature(Number((e.target as HTMLInputElement).value))} />
          <label for="pg-top-p">Top p</label>
          <input id="pg-top-p" type="number" min="0" max="1" step="0.05" value={topP}
            onInput={(e) => setTopP(Number((e.target as HTMLInputElement).value))} />
          <label for="pg-max-tokens">Max tokens</label>
          <input id="pg-max-tokens" type="number" min="1" max="4096" step="1" value={maxTokens}
            onInput={(e) => setMaxTokens(Number((e.target as HTMLInputElement).value))} />
        </div>
        <ol class="transcript" aria-live="polite" aria-label="Conversation">
          {turns.map((t, i) => (
            <li key={i} class={`turn turn-${t.role}`} data-role={t.role}>
              <strong>{t.role === "user" ? "You" : model}</strong>
              <p>{t.content || (busy ? "…" : "")}</p>
            </li>
          ))}
        </ol>
        {problem && <p role="alert" class="error">{problem}</p>}
        <label for="pg-prompt">Message</label>
        <textarea id="pg-prompt" rows={3} value={prompt}
          onInput={(e) => setPrompt((e.target as HTMLTextAreaElement).value)} />
        <div class="actions">
          <button type="submit" disabled={busy || !model}>Send</button>
          {busy && <button type="button" onClick={() => abort.current?.abort()}>Stop</button>}
          <button type="button" disabled={busy} onClick={() => setTurns([])}>Clear</button>
        </div>
      </form>
    </section>
  );
}
