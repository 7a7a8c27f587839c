// Minimal local atproto network: in-memory PLC + PDS (dev mode) on loopback.
// Usage: node start-pds.mjs [plcPort] [pdsPort] [stubAppviewPort]   -> prints one JSON line, keeps running until SIGINT/SIGTERM.
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import * as plc from '@did-plc/server'
import { PDS } from '@atproto/pds'
import { Secp256k1Keypair } from '@atproto/crypto'
import * as ui8 from 'uint8arrays'
import http from 'node:http'
import dns from 'node:dns'
import { syncBuiltinESMExports } from 'node:module'

// 0. Loopback guard: no DNS query ever leaves the process. 'localhost' and the names in
// LOOPBACK_HOSTS (comma-separated, e.g. a test OAuth client's host "client.probe.internal") resolve to
// 127.0.0.1; every other name fails with ENOTFOUND (TXT lookups always fail).
const loopbackHosts = new Set(['localhost', ...(process.env.LOOPBACK_HOSTS || '').split(',').filter(Boolean)])
const notFound = (h) => Object.assign(new Error(`loopback guard: ${h} not resolvable`), { code: 'ENOTFOUND', hostname: h })
dns.lookup = function (hostname, options, cb) {
  if (typeof options === 'function') { cb = options; options = {} }
  if (typeof options === 'number') options = { family: options }
  const h = String(hostname).toLowerCase()
  if (h === '127.0.0.1' || loopbackHosts.has(h) || h.endsWith('.localhost')) {
    return options?.all ? process.nextTick(cb, null, [{ address: '127.0.0.1', family: 4 }]) : process.nextTick(cb, null, '127.0.0.1', 4)
  }
  return process.nextTick(cb, notFound(h))
}
dns.promises.lookup = async (h, o) => new Promise((res, rej) => dns.lookup(h, o || {}, (e, a, f) => e ? rej(e) : res(o?.all ? a : { address: a, family: f })))
const noTxt = async (h) => { throw notFound(h) }
dns.resolveTxt = (h, cb) => process.nextTick(cb, notFound(h))
dns.promises.resolveTxt = noTxt
dns.Resolver.prototype.resolveTxt = function (h, cb) { process.nextTick(cb, notFound(h)) }
dns.promises.Resolver.prototype.resolveTxt = noTxt
syncBuiltinESMExports()

const t0 = Date.now()
const plcPort = Number(process.argv[2] || 2582)
const pdsPort = Number(process.argv[3] || 2583)
const HOST = process.env.PDS_HOST || 'localhost'

// 1. PLC directory with in-memory mock DB (same as @atproto/dev-env TestPlc)
const plcServer = plc.PlcServer.create({ db: plc.Database.mock(), port: plcPort })
await plcServer.start()
const plcUrl = `http://${HOST}:${plcPort}`

// 1b. Stub AppView on loopback: the PDS proxies app.bsky.* here. Python atproto Client.login()
// calls app.bsky.actor.getProfile after createSession, so it needs an answer. Also keeps the
// PDS from doing DNS lookups for a non-loopback appview host.
const stubPort = Number(process.argv[4] || pdsPort + 1)
let pdsUrl // set below; the stub asks the PDS for the account's handle
const stub = http.createServer(async (req, res) => {
  const u = new URL(req.url, 'http://x')
  res.setHeader('content-type', 'application/json')
  if (u.pathname === '/xrpc/app.bsky.actor.getProfile') {
    const r = await fetch(`${pdsUrl}/xrpc/com.atproto.repo.describeRepo?repo=${encodeURIComponent(u.searchParams.get('actor'))}`)
    const repo = await r.json()
    if (!r.ok) { res.statusCode = 400; return res.end(JSON.stringify({ error: 'InvalidRequest', message: 'Profile not found' })) }
    return res.end(JSON.stringify({ did: repo.did, handle: repo.handle }))
  }
  res.statusCode = 501
  res.end(JSON.stringify({ error: 'MethodNotImplemented', message: 'stub appview' }))
})
await new Promise((r) => stub.listen(stubPort, '127.0.0.1', r))
const stubUrl = `http://127.0.0.1:${stubPort}`

// 2. PDS in dev mode (same knobs as @atproto/dev-env TestPds)
const rot = await Secp256k1Keypair.create({ exportable: true })
const dataDirectory = await fs.mkdtemp(path.join(os.tmpdir(), 'pds-'))
pdsUrl = `http://${HOST}:${pdsPort}`
const pds = await PDS.fromEnv({
  devMode: true,
  port: pdsPort,
  hostname: HOST,
  dataDirectory,
  blobstoreDiskLocation: path.join(dataDirectory, 'blobs'),
  didPlcUrl: plcUrl,
  recoveryDidKey: (await Secp256k1Keypair.create()).did(),
  plcRotationKeyK256PrivateKeyHex: ui8.toString(await rot.export(), 'hex'),
  adminPassword: 'admin-pass',
  jwtSecret: 'jwt-secret',
  serviceHandleDomains: ['.test'],
  inviteRequired: false,
  disableSsrfProtection: true,
  bskyAppViewUrl: stubUrl,
  bskyAppViewDid: 'did:example:appview',
  modServiceUrl: stubUrl,
  modServiceDid: 'did:example:mod',
  crawlers: [],
  // Mail through a relay when the test gives one (issue 18): the PDS's own nodemailer transport.
  ...(process.env.PDS_EMAIL_SMTP_URL ? { emailSmtpUrl: process.env.PDS_EMAIL_SMTP_URL } : {}),
  ...(process.env.PDS_EMAIL_FROM_ADDRESS ? { emailFromAddress: process.env.PDS_EMAIL_FROM_ADDRESS } : {}),
})
await pds.start()
const tStarted = Date.now()

// 3. Create account alice.test via XRPC
const handle = process.env.HANDLE || 'alice.test'
const password = process.env.PASSWORD || 'alice-pass'
const res = await fetch(`${pdsUrl}/xrpc/com.atproto.server.createAccount`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ handle, email: 'alice@example.com', password }),
})
const acct = await res.json()
if (!res.ok) { console.error('createAccount failed', res.status, acct); process.exit(1) }
console.log(JSON.stringify({
  plcUrl, pdsUrl, did: acct.did, handle: acct.handle, password,
  startupMs: tStarted - t0, totalMs: Date.now() - t0, pid: process.pid,
}))

const shutdown = async () => { await pds.destroy(); await plcServer.destroy(); stub.close(); await fs.rm(dataDirectory, { recursive: true, force: true }); process.exit(0) }
process.on('SIGINT', shutdown); process.on('SIGTERM', shutdown)
