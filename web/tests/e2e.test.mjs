// End-to-end tests of the page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is downloaded) against a running Roombook.
//
// Environment: BASE_URL (where the page is served, the API on the same origin, dev sign-in
// enabled), ALICE_TOKEN, ADMIN_TOKEN, optional CHROMIUM (the browser binary), SCREENSHOT_DIR
// (default web/test-results). `web/run-tests` starts everything and sets these.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL ?? 'http://127.0.0.1:8088';
const ALICE = must('ALICE_TOKEN');
const ADMIN = must('ADMIN_TOKEN');
const SHOTS = process.env.SCREENSHOT_DIR ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'test-results');
const WAIT = 20_000;

function must(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (web/run-tests sets it)`);
  return v;
}

/** The date `days` from now (UTC) as the day input wants it: YYYY-MM-DD. */
function dayFromNow(days) {
  const d = new Date(Date.now() + days * 86_400_000);
  return d.toISOString().slice(0, 10);
}

let browser;
const pages = {};

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

/** A new browser context signed in as `name`: with `token` pasted, or else with the dev sign-in button. */
async function open(name, token, options) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  await page.goto(BASE);
  if (token) {
    await page.getByLabel('Bearer token from your identity provider').fill(token);
    await page.getByRole('button', { name: 'Sign in with token' }).click();
  } else {
    await page.getByRole('button', { name: `Sign in as ${name}` }).click();
  }
  await page.getByText(/^Signed in as /).waitFor();
  pages[name] = page;
  return page;
}

async function showGrid(page, view, roomId, day) {
  await page.getByRole('link', { name: 'Book a room' }).click();
  await page.getByLabel(view === 'week' ? 'Week view' : 'Day view').check();
  await page.getByLabel('Room', { exact: true }).selectOption(String(roomId));
  await page.getByLabel('Day', { exact: true }).fill(day);
  await page.locator(view === 'week' ? '#week:not([aria-busy]) table' : '#slots:not([aria-busy]) li').first().waitFor();
}

const showDay = (page, roomId, day) => showGrid(page, 'day', roomId, day);

/** The cells of the week grid's row for the hour `label` (e.g. "10:00–11:00"), one per day. */
const weekRow = (page, label) =>
  page.locator('#week tbody tr').filter({ has: page.locator('th', { hasText: label }) }).locator('td');

/** Books the free hour `label` (e.g. "10:00–11:00") and answers the new booking's id. */
async function bookHour(page, label) {
  const created = page.waitForResponse(r => r.url().endsWith('/bookings') && r.request().method() === 'POST');
  await page.getByRole('button', { name: `Book ${label}` }).click();
  const res = await created;
  assert.equal(res.status(), 201, `booking ${label} answered ${res.status()}`);
  await page.locator('#message').filter({ hasText: 'Booked' }).waitFor();
  return (await res.json()).id;
}

async function bookingCard(page, id, status) {
  const card = page.locator(`#bookings [data-booking-id="${id}"][data-status="${status}"]`);
  await card.waitFor();
  return card;
}

async function queueCard(admin, bookingId) {
  await admin.getByRole('link', { name: 'Approvals' }).click();
  const card = admin.locator(`#queue [data-booking-id="${bookingId}"]`);
  await card.waitFor(); // the queue refreshes itself every few seconds
  return card;
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
});

describe('Roombook in a browser', () => {
  test('sign-in page renders with labelled controls', async () => {
    const context = await browser.newContext({ viewport: { width: 1024, height: 700 } });
    const page = await context.newPage();
    await page.goto(BASE);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await page.getByRole('button', { name: 'Sign in as admin' }).waitFor();
    await shot(page, '01-sign-in');
    // A bad token is refused with a clear message.
    await page.getByLabel('Bearer token from your identity provider').fill('not-a-token');
    await page.getByRole('button', { name: 'Sign in with token' }).click();
    await page.getByRole('alert').filter({ hasText: 'Cannot sign in' }).waitFor();
    // In local mode a dev admin is one click away, and signs out again.
    await page.getByRole('button', { name: 'Sign in as admin' }).click();
    await page.getByText('Signed in as admin (admin)').waitFor();
    await page.getByRole('link', { name: 'Approvals' }).waitFor();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    await context.close();
  });

  test('a user books a slot, an admin approves it, the user sees CONFIRMED without reloading', async () => {
    const alice = await open('alice', ALICE, { timezoneId: 'Europe/Berlin', viewport: { width: 1100, height: 800 } });
    const admin = await open('admin', ADMIN, { timezoneId: 'America/New_York', viewport: { width: 1100, height: 800 } });
    await alice.evaluate(() => { window.__samePage = 'yes'; });

    await showDay(alice, 102, dayFromNow(14));
    // Times are shown in the browser's zone: 10:00 in Berlin.
    assert.match(await alice.locator('#book .zone').textContent(), /Europe\/Berlin/);
    const id = await bookHour(alice, '10:00–11:00');
    await alice.locator('#slots li.busy').filter({ hasText: '10:00–11:00' }).waitFor();
    await shot(alice, '02-book-day-grid');

    await alice.getByRole('link', { name: 'My bookings' }).click();
    await bookingCard(alice, id, 'BOOKED');

    const card = await queueCard(admin, id);
    assert.match(await card.textContent(), /alice/);
    await shot(admin, '03-approval-queue');
    await card.getByRole('button', { name: /^Approve / }).click();
    await admin.locator('#message').filter({ hasText: 'Approved' }).waitFor();

    const confirmed = await bookingCard(alice, id, 'CONFIRMED');
    assert.match(await confirmed.textContent(), /CONFIRMED/);
    assert.equal(await alice.evaluate(() => window.__samePage), 'yes', 'the page was not reloaded');
    assert.equal(await alice.locator('#mine').getAttribute('data-live'), 'stream', 'live updates come from the event stream');
    await shot(alice, '04-my-bookings-confirmed');

    // The admin reads the saga's timeline.
    await admin.getByRole('link', { name: 'Saga timeline' }).click();
    await admin.getByLabel('Booking id').fill(id);
    for (let i = 0; i < 20; i++) {
      await admin.getByRole('button', { name: 'Show timeline' }).click();
      await admin.locator('#saga-out .saga-state').waitFor();
      if ((await admin.locator('#saga-out .saga-state').textContent()) === 'COMPLETED') break;
      await admin.waitForTimeout(250);
    }
    assert.equal(await admin.locator('#saga-out .saga-state').textContent(), 'COMPLETED');
    assert.ok(await admin.locator('#saga-out .timeline li').filter({ hasText: 'ConfirmCompleted' }).count() >= 1);
    await shot(admin, '05-saga-timeline');
  });

  test('a denial shows CANCELLED with the reason', async () => {
    const alice = pages.alice;
    const admin = pages.admin;
    await showDay(alice, 102, dayFromNow(14));
    const id = await bookHour(alice, '11:00–12:00');
    await alice.getByRole('link', { name: 'My bookings' }).click();
    await bookingCard(alice, id, 'BOOKED');

    const card = await queueCard(admin, id);
    // Denying needs a reason.
    await card.getByRole('button', { name: /^Deny / }).click();
    await admin.getByRole('alert').filter({ hasText: 'Give a reason' }).waitFor();
    await card.getByLabel('Reason for denying').fill('Projector is being repaired');
    await card.getByRole('button', { name: /^Deny / }).click();
    await admin.locator('#message').filter({ hasText: 'Denied' }).waitFor();

    const cancelled = await bookingCard(alice, id, 'CANCELLED');
    const text = await cancelled.textContent();
    assert.match(text, /CANCELLED/);
    assert.match(text, /Denied: Projector is being repaired/);
    await shot(alice, '06-my-bookings-denied');
  });

  test('double booking shows the conflict (the other user books first; bob, signed in as a dev user, on a phone, by keyboard)', async () => {
    const alice = pages.alice;
    const bob = await open('bob', null, { timezoneId: 'Europe/Berlin', viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    const day = dayFromNow(15);
    await showDay(bob, 103, day); // bob sees 14:00 free…
    const slot = bob.getByRole('button', { name: 'Book 14:00–15:00' });
    await slot.waitFor();

    await showDay(alice, 103, day); // …while alice books it
    await bookHour(alice, '14:00–15:00');

    await slot.focus();
    const refused = bob.waitForResponse(r => r.url().endsWith('/bookings') && r.request().method() === 'POST');
    await bob.keyboard.press('Enter');
    assert.equal((await refused).status(), 409);
    const alert = bob.getByRole('alert');
    await alert.filter({ hasText: 'Conflict' }).waitFor();
    assert.match(await alert.textContent(), /already booked from .*14:00–15:00/);
    // The grid now shows the hour as taken.
    await bob.locator('#slots li.busy').filter({ hasText: '14:00–15:00' }).waitFor();
    await shot(bob, '07-conflict-phone');
  });

  test('a user cancels their own booking', async () => {
    const alice = pages.alice;
    await showDay(alice, 201, dayFromNow(16));
    const id = await bookHour(alice, '09:00–10:00');
    await alice.getByRole('link', { name: 'My bookings' }).click();
    const card = await bookingCard(alice, id, 'BOOKED');
    await card.getByRole('button', { name: /^Cancel booking/ }).click();
    const cancelled = await bookingCard(alice, id, 'CANCELLED');
    assert.match(await cancelled.textContent(), /Cancelled by you/);
  });

  test('the week view shows seven days, books from them and moves a week at a time', async () => {
    const alice = pages.alice;
    const first = dayFromNow(14);
    await showGrid(alice, 'week', 102, first);
    assert.equal(await alice.locator('#week thead th').count(), 8, 'an hours column and seven days');
    assert.ok(await alice.locator('#slots').isHidden(), 'the day list gives way to the week');
    // The first day's 10:00 was approved in the first test; the denied 11:00 is free again.
    assert.match(await weekRow(alice, '10:00–11:00').first().textContent(), /Taken/);
    assert.match(await weekRow(alice, '11:00–12:00').first().textContent(), /Free/);

    // Book the third day's 15:00 from the week.
    const cell = weekRow(alice, '15:00–16:00').nth(2);
    const start = await cell.getAttribute('data-start');
    const created = alice.waitForResponse(r => r.url().endsWith('/bookings') && r.request().method() === 'POST');
    await cell.getByRole('button', { name: /^Book .*, 15:00–16:00$/ }).click();
    const res = await created;
    assert.equal(res.status(), 201);
    assert.equal(Date.parse((await res.json()).useStartDtm), Date.parse(start));
    await weekRow(alice, '15:00–16:00').nth(2).filter({ hasText: 'Awaiting approval' }).waitFor();
    assert.equal(new Date(start).toISOString().slice(0, 10), dayFromNow(16));
    await shot(alice, '10-book-week-grid');

    // The arrows move a week at a time here, a day at a time in the day view.
    await alice.getByRole('button', { name: 'Next week' }).click();
    assert.equal(await alice.getByLabel('Day', { exact: true }).inputValue(), dayFromNow(21));
    await alice.getByLabel('Day view').check();
    await alice.getByRole('button', { name: 'Previous day' }).click();
    assert.equal(await alice.getByLabel('Day', { exact: true }).inputValue(), dayFromNow(20));
    await alice.locator('#slots:not([aria-busy]) li').first().waitFor();
    assert.ok(await alice.locator('#week').isHidden());
  });

  test('an admin adds a room and sees failed notifications', async () => {
    const admin = pages.admin;
    const name = `Aconcagua ${Date.now() % 100000}`;
    await admin.getByRole('link', { name: 'Rooms' }).click();
    await admin.getByLabel('Name', { exact: true }).fill(name);
    await admin.getByLabel('Capacity').fill('10');
    await admin.getByRole('button', { name: 'Add room' }).click();
    await admin.locator('#message').filter({ hasText: `Added room ${name}` }).waitFor();
    await admin.locator('#room-rows tr').filter({ hasText: name }).waitFor();
    await shot(admin, '08-rooms');
    assert.ok(await admin.locator('#room option').filter({ hasText: name }).count() === 1);

    await admin.getByRole('link', { name: 'Failed notifications' }).click();
    await admin.locator('#failed li').first().waitFor();
    await shot(admin, '09-failed-notifications');

    // A user does not see the admin pages.
    assert.equal(await pages.alice.getByRole('link', { name: 'Approvals' }).count(), 0);
  });
});
