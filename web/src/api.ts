// Calls to the Roombook API on the page's own origin, with the signed-in bearer token.

export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  [extra: string]: unknown;
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public problem: Problem,
  ) {
    super(problem.detail || problem.title || `request failed (${status})`);
  }
  /** The problem's short name, e.g. `booking-overlap` for `/problems/booking-overlap`. */
  get kind(): string {
    return (this.problem.type ?? '').split('/').pop() ?? '';
  }
}

export interface Room { id: number; name: string; capacity: number }
export interface Interval { start: string; end: string; status?: string }
export interface Availability { busy: Interval[]; free: Interval[] }
export interface Booking {
  id: string; roomId: number; bookingUserId: string; useStartDtm: string; useEndDtm: string; status: string;
}
export interface ListRow {
  bookingId: string; roomId: number; bookingUserId: string; useStartDtm: string; useEndDtm: string;
  bookingDtm?: string; bookingStatus: string; confirmStatus?: string | null; cancelReason?: string | null;
  cancelDetail?: string | null; denyReason?: string | null; sagaState?: string | null; updatedAt?: string;
}
export interface Confirm {
  id: string; bookingId: string; roomId: number; bookingUserId: string; useStartDtm: string; useEndDtm: string;
  status: string; approvalDeadline?: string;
}
export interface TimelineEntry { at: string; direction: string; type: string; state?: string; note?: string }
export interface Saga {
  bookingId: string; state: string; settled?: boolean; awaiting?: string | null; stuck?: boolean;
  timeline: TimelineEntry[];
}
export type Notification = Record<string, unknown>;

let token = '';
let onUnauthorized: () => void = () => {};

export function setToken(t: string): void { token = t; }
export function whenUnauthorized(f: () => void): void { onUnauthorized = f; }
export function authHeaders(): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json', ...authHeaders() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, { title: 'Network error', detail: 'the server cannot be reached; check your connection' });
  }
  const text = await res.text();
  let data: unknown = undefined;
  try { data = text ? JSON.parse(text) : undefined; } catch { data = undefined; }
  if (!res.ok) {
    const problem: Problem = (data && typeof data === 'object') ? data as Problem : { title: res.statusText, detail: text.slice(0, 200) };
    if (res.status === 401) onUnauthorized();
    throw new ApiError(res.status, problem);
  }
  return data as T;
}

/** The claims of a JWT, read without checking it (the gateway checks it). */
export function claims(jwt: string): { sub?: string; email?: string; roles?: string[]; exp?: number } | null {
  const part = jwt.split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), c => c.charCodeAt(0)));
    return JSON.parse(json);
  } catch {
    return null;
  }
}
