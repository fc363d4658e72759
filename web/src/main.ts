// Roombook's page: sign in, book a free hour, follow "my bookings" live, and (admins) approve or deny,
// read a saga's timeline, see failed notifications and manage rooms. Times are shown in the
// browser's time zone and sent as UTC.

import {
  api, ApiError, claims, setToken, whenUnauthorized,
  type Availability, type Booking, type Confirm, type ListRow, type Notification, type Room, type Saga,
} from './api';
import { LiveRows, type Mode } from './live';

const TOKEN_KEY = 'roombook.token';
const FIRST_HOUR = 7;
const LAST_HOUR = 21; // slots end here
const QUEUE_POLL_MS = 3000;

const $ = <T extends HTMLElement = HTMLElement>(sel: string): T => {
  const el = document.querySelector<T>(sel);
  if (!el) throw new Error(`missing ${sel}`);
  return el;
};

type Child = Node | string | null | undefined | false;
function h(tag: string, attrs: Record<string, string | boolean | ((e: Event) => void)> = {}, ...children: Child[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (typeof v === 'function') el.addEventListener(k.replace(/^on/, ''), v);
    else if (v === true) el.setAttribute(k, '');
    else if (v !== false) el.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

// ---- formatting (the browser's zone) ----

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const fmtDay = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' });
const fmtWeekday = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
const fmtStamp = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });

const time = (iso: string) => fmtTime.format(new Date(iso));
function span(start: string, end: string): string {
  return `${fmtDay.format(new Date(start))}, ${time(start)}–${time(end)}`;
}
function pad(n: number): string { return String(n).padStart(2, '0'); }
function dayValue(d: Date): string { return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`; }
function localDay(value: string): Date {
  const [y, m, d] = value.split('-').map(Number);
  return new Date(y, m - 1, d);
}

// ---- messages ----

function say(text: string): void {
  $('#alert').textContent = '';
  $('#message').textContent = text;
}
function complain(text: string): void {
  $('#message').textContent = '';
  $('#alert').textContent = text;
}
function clearMessages(): void {
  $('#message').textContent = '';
  $('#alert').textContent = '';
}
function problemText(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  return e instanceof Error ? e.message : String(e);
}

// ---- session ----

interface Me { id: string; email?: string; admin: boolean }
let me: Me | null = null;
let rooms: Room[] = [];
const roomName = (id: number) => rooms.find(r => r.id === id)?.name ?? `room ${id}`;

async function signIn(token: string): Promise<void> {
  const c = claims(token.trim());
  if (!c?.sub) throw new Error('that is not a valid token (it has no user in it)');
  if (c.exp && c.exp * 1000 < Date.now()) throw new Error('that token has expired');
  setToken(token.trim());
  try {
    rooms = await api<Room[]>('GET', '/rooms');
  } catch (e) {
    setToken('');
    throw e;
  }
  me = { id: c.sub, email: c.email, admin: (c.roles ?? []).includes('admin') };
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  $('#who').textContent = `Signed in as ${me.id}${me.admin ? ' (admin)' : ''}`;
  $('#sign-out').hidden = false;
  $('#tabs').hidden = false;
  for (const a of document.querySelectorAll<HTMLElement>('#tabs [data-admin]')) a.hidden = !me.admin;
  fillRooms();
  live.start();
  if (!location.hash || location.hash === '#signin') location.hash = '#book';
  else route();
}

function signOut(why?: string): void {
  me = null;
  setToken('');
  sessionStorage.removeItem(TOKEN_KEY);
  live.stop();
  rows.clear();
  $('#who').textContent = '';
  $('#sign-out').hidden = true;
  $('#tabs').hidden = true;
  if (location.hash !== '#signin') history.replaceState(null, '', '#signin');
  route();
  if (why) complain(why);
}

async function devSignIn(user: string, admin: boolean): Promise<void> {
  let res: Response;
  try {
    res = await fetch(`/dev/token?user=${encodeURIComponent(user)}&admin=${admin}`, { headers: { Accept: 'application/json' } });
  } catch {
    throw new Error('the server cannot be reached');
  }
  if (!res.ok) throw new Error('dev sign-in is not enabled on this server; sign in with a token instead');
  const body = await res.json() as { token?: string };
  if (!body.token) throw new Error('the server did not hand out a token');
  await signIn(body.token);
}

// ---- routing ----

const pages = ['signin', 'book', 'mine', 'approvals', 'saga', 'notifications', 'rooms'];
const adminPages = new Set(['approvals', 'saga', 'notifications', 'rooms']);
let queueTimer: number | undefined;

function route(): void {
  let page = location.hash.replace(/^#/, '').split('/')[0] || 'book';
  if (!me) page = 'signin';
  else if (!pages.includes(page) || page === 'signin' || (adminPages.has(page) && !me.admin)) page = 'book';
  for (const p of pages) $(`#${p}`).hidden = p !== page;
  for (const a of document.querySelectorAll<HTMLAnchorElement>('#tabs a')) {
    if (a.hash === `#${page}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  window.clearInterval(queueTimer);
  queueTimer = undefined;
  const heading = document.querySelector<HTMLElement>(`#${page} h2`);
  document.title = `${heading?.textContent ?? 'Roombook'} · Roombook`;
  if (page === 'book') void loadSlots();
  if (page === 'mine') renderRows();
  if (page === 'approvals') {
    void loadQueue();
    queueTimer = window.setInterval(() => void loadQueue(), QUEUE_POLL_MS);
  }
  if (page === 'saga') {
    const id = location.hash.split('/')[1];
    if (id) { $<HTMLInputElement>('#saga-id').value = decodeURIComponent(id); void loadSaga(); }
  }
  if (page === 'notifications') void loadFailed();
  if (page === 'rooms') renderRoomTable();
}

// ---- booking: rooms and the day / week grid ----

function fillRooms(): void {
  const select = $<HTMLSelectElement>('#room');
  const keep = select.value;
  select.replaceChildren(...rooms.map(r => h('option', { value: String(r.id) }, `${r.name} (${r.capacity} seats)`)));
  if (keep && rooms.some(r => String(r.id) === keep)) select.value = keep;
}

type View = 'day' | 'week';
const view = (): View => ($<HTMLInputElement>('input[name="view"][value="week"]').checked ? 'week' : 'day');

/** One bookable hour of one day, and what stands in it. */
interface Slot { start: Date; end: Date; label: string; state: 'free' | 'past' | 'busy'; busyText: string }

function hourOf(day: Date, hour: number): Date {
  const d = new Date(day);
  d.setHours(hour, 0, 0, 0);
  return d;
}

function slotsOf(day: Date, busy: { start: number; end: number; status: string }[]): Slot[] {
  const out: Slot[] = [];
  for (let hour = FIRST_HOUR; hour < LAST_HOUR; hour++) {
    const start = hourOf(day, hour);
    const end = hourOf(day, hour + 1);
    const taken = busy.find(b => b.start < end.getTime() && start.getTime() < b.end);
    out.push({
      start, end,
      label: `${time(start.toISOString())}–${time(end.toISOString())}`,
      state: taken ? 'busy' : start.getTime() <= Date.now() ? 'past' : 'free',
      busyText: taken?.status === 'CONFIRMED' ? 'Taken' : 'Awaiting approval',
    });
  }
  return out;
}

function bookButton(roomId: number, slot: Slot, name: string, ...content: Child[]): HTMLElement {
  return h('button', { type: 'button', 'aria-label': name, onclick: () => void book(roomId, slot.start, slot.end) }, ...content);
}

/** The day: one card per hour. */
function dayList(roomId: number, slots: Slot[]): HTMLElement[] {
  return slots.map(slot => {
    const attrs = { class: `slot ${slot.state}`, 'data-start': slot.start.toISOString() };
    if (slot.state === 'free') {
      return h('li', attrs, bookButton(roomId, slot, `Book ${slot.label}`, h('span', {}, slot.label), h('span', { class: 'tag' }, 'Free')));
    }
    return h('li', attrs, h('span', {}, slot.label), h('span', { class: 'tag' }, slot.state === 'busy' ? slot.busyText : 'Past'));
  });
}

/** The week: hours down, days across, one cell per hour of each day. */
function weekTable(roomId: number, days: Date[], slots: Slot[][]): HTMLElement {
  const head = h('tr', {}, h('th', { scope: 'col' }, 'Time'), ...days.map(d => h('th', { scope: 'col' }, fmtWeekday.format(d))));
  const body = slots[0].map((first, row) => h('tr', {},
    h('th', { scope: 'row' }, first.label),
    ...days.map((day, col) => {
      const slot = slots[col][row];
      const attrs = { class: `slot ${slot.state}`, 'data-start': slot.start.toISOString() };
      if (slot.state === 'free') {
        return h('td', attrs, bookButton(roomId, slot, `Book ${fmtWeekday.format(day)}, ${slot.label}`, h('span', { class: 'tag' }, 'Free')));
      }
      return h('td', attrs, h('span', { class: 'tag' }, slot.state === 'busy' ? slot.busyText : 'Past'));
    })));
  const range = `${fmtDay.format(days[0])} to ${fmtDay.format(days[days.length - 1])}`;
  return h('table', { class: 'grid' },
    h('caption', { class: 'sr-only' }, `${roomName(roomId)}, ${range}`),
    h('thead', {}, head), h('tbody', {}, ...body));
}

let slotRequest = 0;
async function loadSlots(): Promise<void> {
  const list = $('#slots');
  const week = $('#week');
  const shown = view();
  list.hidden = shown !== 'day';
  week.hidden = shown !== 'week';
  const target = shown === 'day' ? list : week;
  const roomId = Number($<HTMLSelectElement>('#room').value);
  const dayInput = $<HTMLInputElement>('#day');
  if (!dayInput.value) dayInput.value = dayValue(new Date());
  if (!roomId) { target.replaceChildren(h(shown === 'day' ? 'li' : 'p', {}, 'No rooms yet.')); return; }
  const first = localDay(dayInput.value);
  const days = Array.from({ length: shown === 'day' ? 1 : 7 }, (_, i) => {
    const d = new Date(first);
    d.setDate(d.getDate() + i);
    return d;
  });
  const from = hourOf(days[0], FIRST_HOUR);
  const to = hourOf(days[days.length - 1], LAST_HOUR);
  const mine = ++slotRequest;
  target.setAttribute('aria-busy', 'true');
  try {
    const av = await api<Availability>('GET',
      `/rooms/${roomId}/availability?from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`);
    if (mine !== slotRequest) return;
    const busy = av.busy.map(b => ({ start: Date.parse(b.start), end: Date.parse(b.end), status: b.status ?? 'BUSY' }));
    const slots = days.map(d => slotsOf(d, busy));
    if (shown === 'day') list.replaceChildren(...dayList(roomId, slots[0]));
    else week.replaceChildren(weekTable(roomId, days, slots));
  } catch (e) {
    if (mine === slotRequest) complain(`Cannot load availability: ${problemText(e)}`);
  } finally {
    if (mine === slotRequest) target.removeAttribute('aria-busy');
  }
}

async function book(roomId: number, start: Date, end: Date): Promise<void> {
  clearMessages();
  try {
    const b = await api<Booking>('POST', '/bookings', {
      roomId, useStartDtm: start.toISOString(), useEndDtm: end.toISOString(),
    });
    upsert({ bookingId: b.id, roomId: b.roomId, bookingUserId: b.bookingUserId, useStartDtm: b.useStartDtm,
      useEndDtm: b.useEndDtm, bookingStatus: b.status, bookingDtm: new Date().toISOString() }, true);
    say(`Booked ${roomName(roomId)}, ${span(b.useStartDtm, b.useEndDtm)}. It now waits for an admin's approval; follow it under My bookings.`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 409) {
      const p = e.problem;
      const when = typeof p.conflictStart === 'string' && typeof p.conflictEnd === 'string'
        ? ` from ${span(p.conflictStart, p.conflictEnd)}` : '';
      complain(`Conflict: ${roomName(roomId)} is already booked${when}. Someone booked it before you; pick another free hour.`);
    } else {
      complain(`Booking failed: ${problemText(e)}`);
    }
  }
  await loadSlots();
}

// ---- my bookings (live) ----

const rows = new Map<string, ListRow>();

function upsert(row: ListRow, local = false): void {
  const old = rows.get(row.bookingId);
  // A local guess never overrides what the list already knows.
  if (local && old) return;
  rows.set(row.bookingId, { ...old, ...row });
  renderRows();
}

function statusText(r: ListRow): { label: string; detail: string } {
  if (r.bookingStatus === 'CANCELLED') {
    const reason = r.cancelReason ?? '';
    const why = r.denyReason || r.cancelDetail || '';
    const label = reason === 'DENIED' ? 'Denied' : reason === 'EXPIRED' ? 'Not approved in time' : reason === 'USER_CANCELLED' ? 'Cancelled by you' : 'Cancelled';
    return { label, detail: why ? `${label}: ${why}` : label };
  }
  if (r.bookingStatus === 'CONFIRMED') return { label: 'Approved', detail: 'Approved' };
  return { label: 'Awaiting approval', detail: 'Awaiting approval' };
}

function renderRows(): void {
  const list = $('#bookings');
  if (!me) return;
  const sorted = [...rows.values()]
    .filter(r => r.bookingUserId === me!.id)
    .sort((a, b) => (b.bookingDtm ?? '').localeCompare(a.bookingDtm ?? ''));
  if (!sorted.length) { list.replaceChildren(h('li', { class: 'empty' }, 'No bookings yet.')); return; }
  list.replaceChildren(...sorted.map(r => {
    const st = statusText(r);
    const cancellable = r.bookingStatus !== 'CANCELLED' && Date.parse(r.useStartDtm) > Date.now();
    return h('li', { class: 'card booking', 'data-booking-id': r.bookingId, 'data-status': r.bookingStatus },
      h('h3', {}, `${roomName(r.roomId)} · ${span(r.useStartDtm, r.useEndDtm)}`),
      h('p', {},
        h('span', { class: `badge ${r.bookingStatus.toLowerCase()}` }, r.bookingStatus),
        ' ', h('span', { class: 'reason' }, st.detail)),
      h('p', { class: 'small' }, `Booking ${r.bookingId}${r.sagaState ? ` · saga ${r.sagaState}` : ''}`),
      cancellable && h('button', {
        type: 'button', 'aria-label': `Cancel booking of ${roomName(r.roomId)}, ${span(r.useStartDtm, r.useEndDtm)}`,
        onclick: () => void cancel(r),
      }, 'Cancel booking'));
  }));
}

async function reloadRows(): Promise<void> {
  if (!me) return;
  const page = await api<{ items: ListRow[] }>('GET', '/bookingLists?size=100');
  for (const r of page.items) rows.set(r.bookingId, r);
  renderRows();
}

async function cancel(r: ListRow): Promise<void> {
  clearMessages();
  try {
    const b = await api<Booking>('DELETE', `/bookings/${encodeURIComponent(r.bookingId)}`);
    rows.set(r.bookingId, { ...r, bookingStatus: b.status, cancelReason: r.cancelReason ?? 'USER_CANCELLED' });
    renderRows();
    say(`Cancelled ${roomName(r.roomId)}, ${span(r.useStartDtm, r.useEndDtm)}.`);
  } catch (e) {
    complain(`Cannot cancel: ${problemText(e)}`);
  }
}

const live = new LiveRows({
  onRow: row => upsert(row as ListRow),
  reload: reloadRows,
  onMode: (mode: Mode) => {
    $('#live-mode').textContent = mode === 'stream' ? 'connected' : mode === 'polling' ? 'checking every 2 s' : 'off';
    $('#mine').dataset.live = mode;
  },
});

// ---- admin: approval queue ----

async function loadQueue(): Promise<void> {
  const list = $('#queue');
  try {
    const queue = await api<Confirm[]>('GET', '/confirms?status=BOOKED');
    const focused = document.activeElement?.closest<HTMLElement>('[data-confirm-id]')?.dataset.confirmId;
    if (focused) return; // don't redraw under someone typing a reason
    if (!queue.length) { list.replaceChildren(h('li', { class: 'empty' }, 'Nothing waits for approval.')); return; }
    list.replaceChildren(...queue.map(c => {
      const what = `${c.bookingUserId}: ${roomName(c.roomId)}, ${span(c.useStartDtm, c.useEndDtm)}`;
      const reasonId = `reason-${c.id}`;
      return h('li', { class: 'card', 'data-confirm-id': c.id, 'data-booking-id': c.bookingId },
        h('h3', {}, what),
        c.approvalDeadline ? h('p', { class: 'small' }, `Decide before ${fmtStamp.format(new Date(c.approvalDeadline))}`) : null,
        h('div', { class: 'row' },
          h('button', { type: 'button', class: 'ok', 'aria-label': `Approve ${what}`, onclick: () => void decide(c, 'CONFIRMED') }, 'Approve'),
          h('label', { for: reasonId }, 'Reason for denying'),
          h('input', { id: reasonId, class: 'reason-input', autocomplete: 'off' }),
          h('button', { type: 'button', class: 'danger', 'aria-label': `Deny ${what}`, onclick: () => void decide(c, 'DENIED') }, 'Deny'),
          h('a', { href: `#saga/${encodeURIComponent(c.bookingId)}` }, 'Timeline')));
    }));
  } catch (e) {
    complain(`Cannot load the approval queue: ${problemText(e)}`);
  }
}

async function decide(c: Confirm, status: 'CONFIRMED' | 'DENIED'): Promise<void> {
  clearMessages();
  const input = document.getElementById(`reason-${c.id}`) as HTMLInputElement | null;
  const reason = input?.value.trim() ?? '';
  if (status === 'DENIED' && !reason) {
    complain('Give a reason for denying, so the person who booked knows why.');
    input?.focus();
    return;
  }
  try {
    await api<Confirm>('PATCH', `/confirms/${encodeURIComponent(c.id)}`, reason ? { status, reason } : { status });
    say(`${status === 'CONFIRMED' ? 'Approved' : 'Denied'} ${c.bookingUserId}'s booking of ${roomName(c.roomId)}, ${span(c.useStartDtm, c.useEndDtm)}.`);
  } catch (e) {
    complain(`Cannot ${status === 'CONFIRMED' ? 'approve' : 'deny'}: ${problemText(e)}`);
  }
  (document.activeElement as HTMLElement | null)?.blur();
  await loadQueue();
  $('#queue').focus();
}

// ---- admin: saga timeline ----

async function loadSaga(): Promise<void> {
  const out = $('#saga-out');
  const id = $<HTMLInputElement>('#saga-id').value.trim();
  if (!id) return;
  try {
    const s = await api<Saga>('GET', `/sagas/${encodeURIComponent(id)}`);
    out.replaceChildren(
      h('p', {}, 'State: ', h('strong', { class: 'saga-state' }, s.state),
        s.awaiting ? ` · waiting for ${s.awaiting}` : '', s.stuck ? ' · STUCK' : ''),
      h('ol', { class: 'timeline' }, ...s.timeline.map(t => h('li', {},
        h('time', { datetime: t.at }, fmtStamp.format(new Date(t.at))), ' ',
        h('span', { class: `dir ${t.direction}` }, t.direction === 'in' ? '← in' : t.direction === 'out' ? '→ out' : t.direction), ' ',
        h('strong', {}, t.type), t.state ? ` · ${t.state}` : '', t.note ? ` · ${t.note}` : ''))));
  } catch (e) {
    out.replaceChildren(h('p', {}, `Cannot load the saga: ${problemText(e)}`));
  }
}

// ---- admin: failed notifications ----

async function loadFailed(): Promise<void> {
  const list = $('#failed');
  try {
    const items = await api<Notification[]>('GET', '/notifications?status=FAILED');
    if (!items.length) { list.replaceChildren(h('li', { class: 'empty' }, 'No failed notifications.')); return; }
    const s = (v: unknown) => (v === null || v === undefined ? '' : String(v));
    list.replaceChildren(...items.map(n => h('li', { class: 'card' },
      h('h3', {}, s(n.subject) || s(n.kind)),
      h('p', {}, `To ${s(n.recipient)} · ${s(n.kind)} · booking ${s(n.bookingId)}`),
      n.attempts !== undefined ? h('p', { class: 'small' }, `Attempts: ${s(n.attempts)}`) : null,
      n.lastError ? h('p', { class: 'small' }, `Last error: ${s(n.lastError)}`) : null)));
  } catch (e) {
    list.replaceChildren(h('li', { class: 'empty' }, `Cannot load notifications: ${problemText(e)}`));
  }
}

// ---- admin: rooms ----

function renderRoomTable(): void {
  $('#room-rows').replaceChildren(...rooms.map(r =>
    h('tr', {}, h('td', {}, String(r.id)), h('td', {}, r.name), h('td', {}, String(r.capacity)))));
}

async function addRoom(): Promise<void> {
  clearMessages();
  const name = $<HTMLInputElement>('#room-name');
  const capacity = $<HTMLInputElement>('#room-capacity');
  try {
    const room = await api<Room>('POST', '/rooms', { name: name.value.trim(), capacity: Number(capacity.value) });
    rooms = await api<Room[]>('GET', '/rooms');
    fillRooms();
    renderRoomTable();
    name.value = '';
    say(`Added room ${room.name} (${room.capacity} seats).`);
  } catch (e) {
    complain(`Cannot add the room: ${problemText(e)}`);
  }
}

// ---- wiring ----

function wire(): void {
  for (const el of document.querySelectorAll<HTMLElement>('.zone')) el.textContent = zone;
  whenUnauthorized(() => signOut('Your session has ended; please sign in again.'));
  window.addEventListener('hashchange', () => { clearMessages(); route(); });
  $('#sign-out').addEventListener('click', () => signOut());
  for (const b of document.querySelectorAll<HTMLButtonElement>('[data-dev-user]')) {
    b.addEventListener('click', () => {
      clearMessages();
      devSignIn(b.dataset.devUser!, b.hasAttribute('data-dev-admin')).catch(e => complain(`Cannot sign in: ${problemText(e)}`));
    });
  }
  $('#token-form').addEventListener('submit', e => {
    e.preventDefault();
    clearMessages();
    const input = $<HTMLTextAreaElement>('#token-input');
    signIn(input.value).then(() => { input.value = ''; }).catch(err => complain(`Cannot sign in: ${problemText(err)}`));
  });
  $('#room').addEventListener('change', () => void loadSlots());
  $('#day').addEventListener('change', () => void loadSlots());
  // The arrows move by what is shown: a day or a week.
  const shift = (direction: number) => {
    const input = $<HTMLInputElement>('#day');
    const d = localDay(input.value || dayValue(new Date()));
    d.setDate(d.getDate() + direction * (view() === 'week' ? 7 : 1));
    input.value = dayValue(d);
    void loadSlots();
  };
  $('#prev-day').addEventListener('click', () => shift(-1));
  $('#next-day').addEventListener('click', () => shift(1));
  for (const radio of document.querySelectorAll<HTMLInputElement>('input[name="view"]')) {
    radio.addEventListener('change', () => {
      const unit = view() === 'week' ? 'week' : 'day';
      $('#prev-day').setAttribute('aria-label', `Previous ${unit}`);
      $('#next-day').setAttribute('aria-label', `Next ${unit}`);
      void loadSlots();
    });
  }
  $('#approvals-refresh').addEventListener('click', () => void loadQueue());
  $('#notifications-refresh').addEventListener('click', () => void loadFailed());
  $('#queue').tabIndex = -1;
  $('#saga-form').addEventListener('submit', e => {
    e.preventDefault();
    history.replaceState(null, '', `#saga/${encodeURIComponent($<HTMLInputElement>('#saga-id').value.trim())}`);
    void loadSaga();
  });
  $('#room-form').addEventListener('submit', e => { e.preventDefault(); void addRoom(); });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved).catch(() => signOut());
  else route();
}

wire();
