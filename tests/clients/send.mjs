// Send one message with nodemailer, as an application would: node send.mjs <module> <json>
//   module: "nodemailer" (current) or "nodemailer6" (the 6.x that @atproto/pds pins)
//   json:   {"transport": <URL string or options object>, "ca": "<path>", "mail": {...sendMail options}}
// Prints one JSON line {"ok": true, "response": "..."} or {"ok": false, "error": "...", "responseCode": N}.
import fs from 'node:fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const [moduleName, spec] = process.argv.slice(2)
const nodemailer = require(moduleName)
const { transport, ca, mail } = JSON.parse(spec)
const tls = { ca: [fs.readFileSync(ca)] }
// A string is the URL form, as @atproto/pds uses PDS_EMAIL_SMTP_URL (user:password split at the first colon);
// the CA then comes from NODE_EXTRA_CA_CERTS, as a PDS operator's would.
const transporter = typeof transport === 'string'
  ? nodemailer.createTransport(transport)
  : nodemailer.createTransport({ ...transport, tls })
try {
  const info = await transporter.sendMail(mail)
  console.log(JSON.stringify({ ok: true, response: info.response, version: require(`${moduleName}/package.json`).version }))
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err.message || err), responseCode: err.responseCode ?? null }))
}
transporter.close()
