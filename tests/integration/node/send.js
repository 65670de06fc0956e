// Send one message with Nodemailer: node send.js PORT SECURE(0|1) CA_FILE KEY FROM TO SUBJECT ATTACH_PATH
// Prints the server's final reply ("250 2.0.0 Ok: queued as …") on success.
'use strict';
const fs = require('fs');
const nodemailer = require('nodemailer');

const [port, secure, ca, key, from, to, subject, attach] = process.argv.slice(2);
const transport = nodemailer.createTransport({
  host: '127.0.0.1',
  port: Number(port),
  secure: secure === '1',          // 465: implicit TLS; 587: STARTTLS
  requireTLS: secure !== '1',      // refuse to authenticate without STARTTLS
  auth: { user: 'app', pass: key },
  tls: { ca: [fs.readFileSync(ca)], servername: 'localhost' },
  connectionTimeout: 10000,
  greetingTimeout: 10000,
  socketTimeout: 10000,
});
transport.sendMail({
  from, to, subject,
  text: 'Hello from Nodemailer\n',
  attachments: [{ filename: 'report.bin', path: attach }],
}).then((info) => {
  console.log(info.response);
}).catch((err) => {
  console.error(err.message);
  process.exit(1);
});
