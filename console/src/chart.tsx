// The loss curves: train loss at every logged step, eval loss where the job evaluated.
// uPlot draws on a canvas; the same points are in a table beside it for screen readers
// (and anyone who wants the numbers).
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import { num } from "./format";
import type { Point } from "./types";

function data(points: Point[]): uPlot.AlignedData {
  return [
    points.map((p) => p.step),
    points.map((p) => p.train_loss ?? null),
    points.map((p) => p.valid_loss ?? null),
  ];
}

export function LossChart({ points }: { points: Point[] }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current!;
    const options: uPlot.Options = {
      width: Math.max(320, el.clientWidth),
      height: 300,
      scales: { x: { time: false } },
      // Steps are whole numbers: no tick between two of them.
      axes: [{ label: "step", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] }, { label: "loss" }],
      series: [
        { label: "step" },
        { label: "train loss", stroke: "#2563eb", width: 2, points: { show: true } },
        // Evaluated only every so many steps: join its points across the gaps.
        { label: "eval loss", stroke: "#dc2626", width: 2, spanGaps: true, points: { show: true, size: 7 } },
      ],
    };
    plot.current = new uPlot(options, data([]), el);
    const resize = () => plot.current?.setSize({ width: Math.max(320, el.clientWidth), height: 300 });
    addEventListener("resize", resize);
    return () => {
      removeEventListener("resize", resize);
      plot.current?.destroy();
      plot.current = null;
    };
  }, []);

  useEffect(() => {
    plot.current?.setData(data(points));
  }, [points]);

  return (
    <figure class="chart" aria-labelledby="loss-caption">
      <figcaption id="loss-caption">
        Loss per step: {points.length} {points.length === 1 ? "point" : "points"}
      </figcaption>
      {/* The steps drawn, for tests and tools reading the page (the canvas holds pixels). */}
      <div ref={box} role="img" aria-label="Training and eval loss curve" data-steps={points.map((p) => p.step).join(",")} />
      <details>
        <summary>The points as a table</summary>
        <table class="points">
          <thead>
            <tr>
              <th scope="col">Step</th>
              <th scope="col">Train loss</th>
              <th scope="col">Eval loss</th>
              <th scope="col">Learning rate</th>
              <th scope="col">Tokens/s</th>
            </tr>
          </thead>
          <tbody>
            {points.map((p) => (
              <tr key={p.step} data-step={p.step}>
                <td>{p.step}</td>
                <td>{num(p.train_loss)}</td>
                <td>{num(p.valid_loss)}</td>
                <td>{p.learning_rate === undefined ? "–" : p.learning_rate.toExponential(2)}</td>
                <td>{num(p.tokens_per_second, 1)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </figure>
  );
}
