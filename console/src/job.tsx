// One job: its figures, its loss curves as they grow, and its events.
import { Fragment } from "preact";
import { useState } from "preact/hooks";
import { ApiError, getJSON } from "./api";
import { LossChart } from "./chart";
import { bytes, num, when } from "./format";
import { progressText, StatusBadge } from "./jobs";
import type { OnError } from "./main";
import { useFocusHeading, usePoll } from "./poll";
import { type ExportSummary, type History, type Job, type JobEvent, type List, TERMINAL } from "./types";

export function JobPage({ jobId, onError }: { jobId: string; onError: OnError }) {
  const [job, setJob] = useState<Job | null>(null);
  const [history, setHistory] = useState<History | null>(null);
  const [events, setEvents] = useState<JobEvent[]>([]);
  const [missing, setMissing] = useState<string | null>(null);
  const heading = useFocusHeading<HTMLHeadingElement>(jobId);
  const base = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;

  usePoll(
    async (signal) => {
      try {
        const [j, h, e] = await Promise.all([
          getJSON<Job>(base, signal),
          getJSON<History>(`${base}/history`, signal),
          getJSON<List<JobEvent>>(`${base}/events?limit=50`, signal),
        ]);
        setJob(j);
        setHistory(h);
        setEvents(e.data.filter((event) => event.type === "message"));
        // A finished job changes no more, except a served one's phase: keep polling that.
        return !(TERMINAL.has(j.status) && j.maap.phase !== "Serving");
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) {
          setMissing(error.message);
          return false;
        }
        onError(error);
      }
    },
    2000,
    [jobId],
  );

  const metrics = job?.maap.metrics ?? {};
  return (
    <section aria-labelledby="job-heading">
      <p>
        <a href="#/">← All jobs</a>
      </p>
      <h1 id="job-heading" tabIndex={-1} ref={heading}>
        {jobId}
      </h1>
      {missing && <p role="alert" class="error">{missing}</p>}
      {job && (
        <dl class="facts">
          <dt>Status</dt>
          <dd>
            <StatusBadge job={job} />
          </dd>
          <dt>Progress</dt>
          <dd>{progressText(job)}</dd>
          <dt>Base model</dt>
          <dd>{job.model}</dd>
          <dt>Method</dt>
          <dd>{job.maap.method}</dd>
          <dt>Fine-tuned model</dt>
          <dd>{job.fine_tuned_model ?? "–"}</dd>
          <dt>Eval loss before → after</dt>
          <dd>
            {num(metrics.evalLossBefore)} → {num(metrics.evalLossAfter)}
          </dd>
          <dt>Tokens/s</dt>
          <dd>{num(metrics.tokensPerSecond ?? job.maap.progress?.tokensPerSecond, 1)}</dd>
          <dt>Created</dt>
          <dd>{when(job.created_at)}</dd>
          <dt>Finished</dt>
          <dd>{when(job.finished_at)}</dd>
          {job.error && (
            <>
              <dt>Error</dt>
              <dd class="error">{job.error.message}</dd>
            </>
          )}
        </dl>
      )}
      {history && <LossChart points={history.points} />}
      {job?.maap.export && <ExportFacts summary={job.maap.export} />}
      {job && job.maap.conditions.length > 0 && (
        <>
          <h2 id="conditions-heading">Conditions</h2>
          <table class="conditions" aria-labelledby="conditions-heading">
            <thead>
              <tr>
                <th scope="col">Type</th>
                <th scope="col">Status</th>
                <th scope="col">Reason</th>
                <th scope="col">Message</th>
                <th scope="col">Since</th>
              </tr>
            </thead>
            <tbody>
              {job.maap.conditions.map((c) => (
                <tr key={c.type} data-condition={c.type}>
                  <td>{c.type}</td>
                  <td>{c.status}</td>
                  <td>{c.reason ?? ""}</td>
                  <td>{c.message ?? ""}</td>
                  <td>{c.lastTransitionTime ? new Date(c.lastTransitionTime).toLocaleString() : ""}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
      {job?.maap.artifacts && (
        <>
          <h2>Artifacts</h2>
          <dl class="facts artifacts">
            {Object.entries(job.maap.artifacts).map(([name, where]) => (
              <Fragment key={name}>
                <dt>{name}</dt>
                <dd>
                  <code>{String(where)}</code>
                </dd>
              </Fragment>
            ))}
          </dl>
        </>
      )}
      {history && history.checkpoints.length > 0 && (
        <>
          <h2>Checkpoints</h2>
          <ul>
            {history.checkpoints.map((c) => (
              <li key={c.step}>
                step {c.step}: <code>{c.path}</code> (train loss {num(c.train_loss)})
              </li>
            ))}
          </ul>
        </>
      )}
      {events.length > 0 && (
        <>
          <h2>Events</h2>
          <ol class="events" reversed>
            {events.map((e) => (
              <li key={e.id} class={`level-${e.level}`}>
                <time dateTime={new Date(e.created_at * 1000).toISOString()}>{when(e.created_at)}</time>{" "}
                {e.message}
              </li>
            ))}
          </ol>
        </>
      )}
    </section>
  );
}

function parityText(summary: ExportSummary): string {
  const parity = summary.parity;
  if (!parity) return "not run";
  if (parity.skipped) return `skipped: ${parity.skipped}`;
  const verdict = parity.passed ? "passed" : parity.passed === false ? "failed" : "not run";
  const figures = [];
  if (parity.exactMatches !== null && parity.exactMatches !== undefined && parity.prompts)
    figures.push(`${parity.exactMatches}/${parity.prompts} identical answers`);
  if (parity.tokenAgreement !== null && parity.tokenAgreement !== undefined)
    figures.push(`${Math.round(parity.tokenAgreement * 100)}% token agreement`);
  return figures.length ? `${verdict} (${figures.join(", ")})` : verdict;
}

function ExportFacts({ summary }: { summary: ExportSummary }) {
  return (
    <>
      <h2>Export</h2>
      <dl class="facts export">
        <dt>Precision</dt>
        <dd>
          {summary.precision}
          {summary.quantization ? ` (${summary.quantization})` : ""} on {summary.executionProvider}
        </dd>
        <dt>Size</dt>
        <dd data-bytes={summary.sizeBytes}>{bytes(summary.sizeBytes)}</dd>
        <dt>Build time</dt>
        <dd>{num(summary.seconds, 1)} s</dd>
        <dt>Parity gate</dt>
        <dd>{parityText(summary)}</dd>
      </dl>
    </>
  );
}
