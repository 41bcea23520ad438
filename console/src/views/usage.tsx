// Usage: tokens and cost per model and per day (GetUsage) as charts and tables, and budgets
// (GetBudget/SetBudget). uPlot is loaded only when this page is opened.
import { useEffect, useRef, useState } from "preact/hooks";
import { describe } from "../api";
import { useConsole } from "../app";
import type { Budget, BudgetLimit, Usage, UsageRow } from "../types";

const PALETTE = ["#2b6cd4", "#d4602b", "#1f9d6b", "#a23bc4", "#c49a1b", "#d4317a", "#3aa3b8", "#6b6b6b"];

interface Series {
  days: string[];
  models: string[];
  tokens: number[][];
  cost: number[][];
}

function seriesOf(usage: Usage): Series {
  const days: string[] = [];
  const start = new Date(usage.start_time * 1000);
  const end = new Date(usage.end_time * 1000);
  for (let day = new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate())); day <= end; day = new Date(day.getTime() + 86_400_000)) {
    days.push(day.toISOString().slice(0, 10));
  }
  const models = [...new Set(usage.rows.map((r) => r.model ?? "?"))].sort();
  const tokens = models.map(() => days.map(() => 0));
  const cost = models.map(() => days.map(() => 0));
  for (const row of usage.rows) {
    const m = models.indexOf(row.model ?? "?");
    const d = days.indexOf(row.day ?? "");
    if (m < 0 || d < 0) continue;
    tokens[m][d] += row.total_tokens;
    cost[m][d] += row.cost_usd;
  }
  return { days, models, tokens, cost };
}

const cssVar = (name: string) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";

function Chart(props: { title: string; series: Series; values: number[][]; format: (value: number) => string; testId: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [theme, setTheme] = useState(document.documentElement.dataset.theme);
  useEffect(() => {
    const observer = new MutationObserver(() => setTheme(document.documentElement.dataset.theme));
    observer.observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
    return () => observer.disconnect();
  }, []);
  useEffect(() => {
    let chart: { destroy(): void } | null = null;
    let cancelled = false;
    Promise.all([import("uplot"), import("uplot/dist/uPlot.min.css")]).then(([{ default: uPlot }]) => {
      if (cancelled || !box.current) return;
      const axis = { stroke: cssVar("--text"), grid: { stroke: cssVar("--border") }, ticks: { stroke: cssVar("--border") } };
      const xs = props.series.days.map((day) => Date.parse(`${day}T00:00:00Z`) / 1000);
      chart = new uPlot({
        width: Math.max(320, box.current.clientWidth),
        height: 240,
        scales: { x: { time: true } },
        axes: [axis, { ...axis, values: (_u: unknown, ticks: number[]) => ticks.map(props.format), size: 70 }],
        legend: { show: true },
        series: [{ label: "Day" }, ...props.series.models.map((model, index) => ({
          label: model, stroke: PALETTE[index % PALETTE.length], width: 2, points: { show: true, size: 6 },
          value: (_u: unknown, v: number | null) => (v == null ? "–" : props.format(v)),
        }))],
      }, [xs, ...props.values], box.current);
    });
    return () => {
      cancelled = true;
      chart?.destroy();
    };
  }, [props.series, props.values, theme]);
  return (
    <figure class="chart" data-testid={props.testId}>
      <figcaption>{props.title}</figcaption>
      <div ref={box} role="img" aria-label={`${props.title}: a line per model over ${props.series.days.length} days; the table below has the numbers.`} />
    </figure>
  );
}

const tokens = (value: number) => (value >= 1e6 ? `${(value / 1e6).toFixed(1)}M` : value >= 1e3 ? `${(value / 1e3).toFixed(1)}k` : String(Math.round(value)));
const dollars = (value: number) => `$${value < 1 ? value.toFixed(4) : value.toFixed(2)}`;

function Totals(props: { rows: UsageRow[]; total: UsageRow }) {
  const byModel = new Map<string, UsageRow>();
  for (const row of props.rows) {
    const key = row.model ?? "?";
    const sum = byModel.get(key) ?? { model: key, requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, total_tokens: 0, cost_usd: 0 };
    sum.requests += row.requests;
    sum.errors += row.errors;
    sum.input_tokens += row.input_tokens;
    sum.output_tokens += row.output_tokens;
    sum.total_tokens += row.total_tokens;
    sum.cost_usd += row.cost_usd;
    byModel.set(key, sum);
  }
  return (
    <table class="table" data-testid="usage-table">
      <caption>Per model, over the period</caption>
      <thead><tr><th scope="col">Model</th><th scope="col">Calls</th><th scope="col">Errors</th><th scope="col">Input tokens</th><th scope="col">Output tokens</th><th scope="col">Cost</th></tr></thead>
      <tbody>
        {[...byModel.values()].map((row) => (
          <tr key={row.model}><th scope="row">{row.model}</th><td>{row.requests}</td><td>{row.errors}</td><td>{row.input_tokens}</td><td>{row.output_tokens}</td><td>{dollars(row.cost_usd)}</td></tr>
        ))}
      </tbody>
      <tfoot><tr><th scope="row">All</th><td>{props.total.requests}</td><td>{props.total.errors}</td><td>{props.total.input_tokens}</td><td>{props.total.output_tokens}</td><td>{dollars(props.total.cost_usd)}</td></tr></tfoot>
    </table>
  );
}

type DraftLimit = { period: BudgetLimit["period"]; unit: BudgetLimit["unit"]; amount: string };

function Budgets() {
  const { api, notify } = useConsole();
  const [budget, setBudget] = useState<Budget | null>(null);
  const [draft, setDraft] = useState<DraftLimit[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saving, setSaving] = useState(false);

  useEffect(() => {
    api.get<Budget>("/parley/budget").then(setBudget).catch((failure) => setError(describe(failure)));
  }, [api]);

  const save = async (event: Event) => {
    event.preventDefault();
    setSaving(true);
    try {
      const saved = await api.post<Budget>("/parley/budget", { limits: draft!.map((l) => ({ period: l.period, unit: l.unit, amount: Number(l.amount) })) });
      setBudget(saved);
      setDraft(null);
      notify("info", "Budget saved.");
    } catch (failure) {
      notify("error", `Budget not saved: ${describe(failure)}`);
    } finally {
      setSaving(false);
    }
  };

  return (
    <section class="budgets" aria-labelledby="budgets-title" data-testid="budgets">
      <h2 id="budgets-title">Budgets</h2>
      {!budget && !error && <p class="muted" aria-busy="true">Loading budgets…</p>}
      {error && <p class="error" role="alert">{error}</p>}
      {budget && !draft && (
        <>
          {budget.limits.length === 0 ? <p class="muted">No limits: spending is not capped.</p> : (
            <ul class="limits">
              {budget.limits.map((limit) => {
                const fraction = limit.amount > 0 ? Math.min(1, limit.spent / limit.amount) : 0;
                const show = (v: number) => (limit.unit === "usd" ? dollars(v) : `${tokens(v)} tokens`);
                return (
                  <li key={`${limit.period}-${limit.unit}`}>
                    <span>Per {limit.period}: {show(limit.spent)} of {show(limit.amount)}{limit.admin_set ? " (set by an administrator)" : ""}</span>
                    <meter min={0} max={1} value={fraction} high={0.8} optimum={0} aria-label={`Spent this ${limit.period}`} />
                    {limit.resets_at && <span class="muted">resets {new Date(limit.resets_at * 1000).toLocaleString()}</span>}
                  </li>
                );
              })}
            </ul>
          )}
          <button type="button" class="button" onClick={() => setDraft(budget.limits.map((l) => ({ period: l.period, unit: l.unit, amount: String(l.amount) })))}>Edit limits</button>
        </>
      )}
      {draft && (
        <form class="stack" onSubmit={save}>
          {draft.map((limit, index) => (
            <fieldset key={index} class="row">
              <legend>Limit {index + 1}</legend>
              <label for={`period-${index}`}>Period</label>
              <select id={`period-${index}`} value={limit.period} onChange={(e) => setDraft(draft.map((l, i) => (i === index ? { ...l, period: (e.target as HTMLSelectElement).value as DraftLimit["period"] } : l)))}>
                <option value="day">day</option><option value="week">week</option><option value="month">month</option>
              </select>
              <label for={`unit-${index}`}>Unit</label>
              <select id={`unit-${index}`} value={limit.unit} onChange={(e) => setDraft(draft.map((l, i) => (i === index ? { ...l, unit: (e.target as HTMLSelectElement).value as DraftLimit["unit"] } : l)))}>
                <option value="usd">USD</option><option value="tokens">tokens</option>
              </select>
              <label for={`amount-${index}`}>Amount</label>
              <input id={`amount-${index}`} inputMode="decimal" required value={limit.amount}
                onInput={(e) => setDraft(draft.map((l, i) => (i === index ? { ...l, amount: (e.target as HTMLInputElement).value } : l)))} />
              <button type="button" class="button small" onClick={() => setDraft(draft.filter((_, i) => i !== index))}>Remove</button>
            </fieldset>
          ))}
          <div class="row">
            <button type="button" class="button" onClick={() => setDraft([...draft, { period: "month", unit: "usd", amount: "" }])}>Add a limit</button>
            <button type="submit" class="button primary" disabled={saving}>{saving ? "Saving…" : "Save limits"}</button>
            <button type="button" class="button" onClick={() => setDraft(null)}>Cancel</button>
          </div>
        </form>
      )}
    </section>
  );
}

export function UsageView() {
  const { api } = useConsole();
  const [days, setDays] = useState(30);
  const [everyone, setEveryone] = useState(false);
  const [usage, setUsage] = useState<Usage | null>(null);
  const [series, setSeries] = useState<Series | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);

  useEffect(() => {
    setLoading(true);
    setError(null);
    api.get<Usage>(`/parley/usage?days=${days}&group_by=model,day${everyone ? "&all_users=true" : ""}`)
      .then((body) => {
        setUsage(body);
        setSeries(seriesOf(body));
      })
      .catch((failure) => setError(describe(failure)))
      .finally(() => setLoading(false));
  }, [api, days, everyone]);

  return (
    <div class="content usage" aria-busy={loading}>
      <h1>Usage</h1>
      <div class="row controls">
        <label for="usage-days">Period</label>
        <select id="usage-days" value={days} onChange={(e) => setDays(Number((e.target as HTMLSelectElement).value))}>
          <option value={7}>last 7 days</option><option value={30}>last 30 days</option><option value={90}>last 90 days</option>
        </select>
        <label class="check"><input type="checkbox" checked={everyone} onChange={(e) => setEveryone((e.target as HTMLInputElement).checked)} /> Every user (administrators)</label>
      </div>
      {loading && <p class="muted" data-testid="usage-loading">Loading usage…</p>}
      {error && <p class="error" role="alert">{error}</p>}
      {usage && series && !loading && (
        usage.rows.length === 0 ? <p class="muted">No calls in this period.</p> : (
          <>
            <div class="charts">
              <Chart title="Tokens per day" series={series} values={series.tokens} format={tokens} testId="tokens-chart" />
              <Chart title="Cost per day (USD)" series={series} values={series.cost} format={dollars} testId="cost-chart" />
            </div>
            <Totals rows={usage.rows} total={usage.total} />
          </>
        )
      )}
      <Budgets />
    </div>
  );
}
