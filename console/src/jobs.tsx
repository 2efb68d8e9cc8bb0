// The jobs list: every fine-tuning job of the key's namespace, newest first, live.
import { useState } from "preact/hooks";
import { getJSON } from "./api";
import { age } from "./format";
import type { OnError } from "./main";
import { useFocusHeading, usePoll } from "./poll";
import type { Job, List, Progress } from "./types";

export function progressText(job: Job): string {
  const p: Progress | null = job.maap.progress;
  if (job.status === "succeeded") return "done";
  if (!p || p.step === null || p.step === undefined) return "–";
  const total = p.totalSteps ? ` of ${p.totalSteps}` : "";
  const percent = p.percent !== null && p.percent !== undefined ? ` (${Math.round(p.percent)}%)` : "";
  return `step ${p.step}${total}${percent}`;
}

export function StatusBadge({ job }: { job: Job }) {
  const phase = job.maap.phase;
  return (
    <span class={`status status-${job.status}`} data-status={job.status} data-phase={phase ?? ""}>
      {job.status}
      {phase && phase.toLowerCase() !== job.status ? ` · ${phase}` : ""}
    </span>
  );
}

// The newest PAGE jobs first; "Show more" adds a page, up to what one request may list
// (the API's limit). The whole shown list stays live: each poll asks for all of it.
export const PAGE = 100;
export const MOST = 1000;

export function JobsPage({ onError }: { onError: OnError }) {
  const [jobs, setJobs] = useState<Job[] | null>(null);
  const [more, setMore] = useState(false);
  const [limit, setLimit] = useState(PAGE);
  const heading = useFocusHeading<HTMLHeadingElement>("jobs");
  usePoll(
    async (signal) => {
      try {
        const listed = await getJSON<List<Job>>(`/v1/fine_tuning/jobs?limit=${limit}`, signal);
        setJobs(listed.data);
        setMore(listed.has_more ?? false);
      } catch (error) {
        onError(error);
      }
    },
    3000,
    [limit],
  );
  return (
    <section aria-labelledby="jobs-heading">
      <h1 id="jobs-heading" tabIndex={-1} ref={heading}>
        Fine-tuning jobs
      </h1>
      {jobs === null && <p>Loading…</p>}
      {jobs !== null && jobs.length === 0 && (
        <p>No fine-tuning jobs yet: create one with the OpenAI client or `maap run`.</p>
      )}
      {jobs !== null && jobs.length > 0 && (
        <table class="jobs" aria-describedby="jobs-heading">
          <thead>
            <tr>
              <th scope="col">Job</th>
              <th scope="col">Namespace</th>
              <th scope="col">Base model</th>
              <th scope="col">Method</th>
              <th scope="col">Status</th>
              <th scope="col">Progress</th>
              <th scope="col">Age</th>
            </tr>
          </thead>
          <tbody>
            {jobs.map((job) => (
              <tr key={job.id} data-job={job.id}>
                <td>
                  <a href={`#/jobs/${encodeURIComponent(job.id)}`}>{job.id}</a>
                  {job.user_provided_suffix && <span class="suffix"> {job.user_provided_suffix}</span>}
                </td>
                <td>{job.organization_id}</td>
                <td>{job.model}</td>
                <td>{job.maap.method}</td>
                <td>
                  <StatusBadge job={job} />
                </td>
                <td>{progressText(job)}</td>
                <td>
                  <time dateTime={new Date(job.created_at * 1000).toISOString()}>{age(job.created_at)}</time>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {jobs !== null && more && limit < MOST && (
        <p>
          <button type="button" onClick={() => setLimit(Math.min(limit + PAGE, MOST))}>
            Show older jobs
          </button>
        </p>
      )}
      {jobs !== null && more && limit >= MOST && (
        <p>
          The {MOST} newest jobs are shown; GET /v1/fine_tuning/jobs with <code>after</code> lists
          the older ones.
        </p>
      )}
    </section>
  );
}
