// The gateway's objects, as far as the console reads them.

export interface Progress {
  stage?: string | null;
  step?: number | null;
  totalSteps?: number | null;
  percent?: number | null;
  loss?: number | null;
  tokensPerSecond?: number | null;
  etaSeconds?: number | null;
}

export interface Job {
  id: string;
  created_at: number;
  finished_at: number | null;
  model: string;
  fine_tuned_model: string | null;
  organization_id: string;
  status: string;
  user_provided_suffix: string | null;
  trained_tokens: number | null;
  error: { code: string; message: string; param: string | null } | null;
  maap: {
    phase: string | null;
    method: string;
    progress: Progress | null;
    metrics: Record<string, number | null> | null;
    export: ExportSummary | null;
    artifacts: Record<string, string | number | null> | null;
    conditions: Condition[];
    endpoint: string | null;
  };
}

export interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
}

export interface ExportSummary {
  precision: string;
  executionProvider: string;
  quantization?: string | null;
  sizeBytes: number;
  seconds: number;
  parity?: {
    passed?: boolean | null;
    skipped?: string | null;
    failure?: string | null;
    exactMatches?: number | null;
    prompts?: number | null;
    tokenAgreement?: number | null;
  } | null;
}

export interface List<T> {
  data: T[];
  has_more?: boolean;
}

export interface Point {
  step: number;
  time: number;
  train_loss?: number;
  valid_loss?: number;
  learning_rate?: number;
  epoch?: number;
  tokens_per_second?: number;
}

export interface Checkpoint {
  step: number;
  time: number;
  path: string;
  train_loss?: number;
  valid_loss?: number;
}

export interface History {
  points: Point[];
  checkpoints: Checkpoint[];
}

export interface JobEvent {
  id: string;
  created_at: number;
  level: string;
  message: string;
  type: string;
}

export interface Model {
  id: string;
  owned_by: string;
  parent?: string | null;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
