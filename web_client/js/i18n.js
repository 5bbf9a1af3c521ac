// Chinese and English strings for both pages.
//
// Static text is marked in the HTML with data-i18n (textContent),
// data-i18n-placeholder, data-i18n-aria-label and data-i18n-title; text built at
// runtime calls t() and re-renders through onLangChange(). The choice is kept in
// localStorage; the first visit follows navigator.language.

const STORAGE_KEY = 'vcounter.lang';
export const LANGS = ['zh', 'en'];

const STRINGS = {
  en: {
    'lang.switch': '中文',
    'lang.switchLabel': 'Switch language to Chinese',

    'brand.name': 'Video Counter',
    'brand.agent': 'Agent workbench',
    'page.customerTitle': 'Video Counter',
    'page.agentTitle': 'Video Counter · Agent workbench',

    'state.idle': 'Not in queue',
    'state.waiting': 'Waiting in queue',
    'state.offered': 'Incoming customer',
    'state.active': 'In call',
    'state.ended': 'Call ended',
    'state.agentIdle': 'No call',

    'business.account_opening': 'Account opening',
    'business.loan_signing': 'Loan signing',
    'business.wealth_product': 'Wealth product purchase',
    'business.account_opening.desc': 'Open a new account with an agent who checks your ID',
    'business.loan_signing.desc': 'Sign your loan contract face to face',
    'business.wealth_product.desc': 'Buy a wealth product with the required audio and video record',

    'customer.step1': 'What can we help you with?',
    'customer.step1Hint': 'Choose a service, then join the queue. An agent will see and hear you.',
    'customer.nameLabel': 'Your name (optional)',
    'customer.namePlaceholder': 'How should the agent address you?',
    'customer.defaultName': 'Customer',
    'customer.chooseBusiness': 'Please choose a service first.',
    'customer.step2': 'Check your camera and microphone',
    'customer.step2Hint': 'Make sure your face is well lit and clearly visible.',
    'customer.micLabel': 'Microphone level',
    'customer.micHint': 'Say something: the bar should move.',
    'customer.join': 'Join the queue',
    'customer.recordingTitle': 'This call is recorded',
    'customer.recordingText': 'As banking regulation requires, the whole call (your and the agent\'s audio and video) is recorded, kept securely for the legally required period and reviewed only by the bank\'s quality inspectors.',
    'customer.recordingAccept': 'I understand and agree that this call is recorded',
    'customer.joining': 'Connecting…',
    'customer.privacy': 'For your protection, calls are recorded as required by banking regulations. Never share your passwords or verification codes with anyone, including our agents.',

    'device.starting': 'Starting camera and microphone…',
    'device.ok': 'Camera and microphone are working.',
    'device.denied': 'Camera or microphone access was blocked. Allow access in your browser settings (the icon in the address bar), then try again.',
    'device.missing': 'No camera or microphone was found. Connect one and try again.',
    'device.busy': 'The camera or microphone is being used by another application. Close it and try again.',
    'device.insecure': 'This page cannot use the camera: it must be opened over HTTPS.',
    'device.failed': 'The camera or microphone could not be started. Try again.',
    'device.ended': 'The camera or microphone was disconnected. Try again.',
    'device.retry': 'Try again',
    'device.noPreview': 'Camera preview',

    'queue.title': 'You are in the queue',
    'queue.service': 'Service',
    'queue.position': 'Your position',
    'queue.wait': 'Estimated wait',
    'queue.agents': 'Agents available: {n}',
    'queue.hint': 'Please keep this page open. We will connect you as soon as an agent is free.',
    'queue.cancel': 'Leave the queue',
    'queue.offered': 'An agent is about to take your call…',

    'wait.lessThanMinute': 'less than a minute',
    'wait.minutes': 'about {n} min',
    'wait.hours': 'about {h} h {m} min',

    'call.agent': 'Agent',
    'call.you': 'You',
    'call.mute': 'Mute',
    'call.unmute': 'Unmute',
    'call.cameraOff': 'Camera off',
    'call.cameraOn': 'Camera on',
    'call.hangup': 'Hang up',
    'call.tapToPlay': 'Tap to hear and see the agent',
    'call.tapToPlayCustomer': 'Tap to hear and see the customer',
    'call.connecting': 'Connecting video…',
    'call.mediaUnstable': 'The network is unstable. Trying to keep the call going…',
    'call.mediaRetry': 'Video connection lost. Reconnecting…',
    'call.mediaFailed': 'The video connection could not be established. Check your network.',
    'call.duration': 'Duration',

    'notice.peerReconnectingAgent': 'The agent’s connection was lost. Please wait…',
    'notice.peerReconnectingCustomer': 'The customer’s connection was lost. Waiting up to {n} s for them to come back…',
    'notice.peerReconnected': 'The connection is back.',
    'notice.requeued': 'The agent was disconnected. You are back at the head of the queue.',
    'notice.resuming': 'Resuming your session…',

    'banner.reconnecting': 'Connection lost. Reconnecting…',
    'banner.offline': 'You are offline.',
    'banner.reconnect': 'Reconnect',

    'ended.title': 'Your session has ended',
    'ended.thanks': 'Thank you for using the video counter.',
    'ended.again': 'Start over',

    'reason.customer_hangup': 'You ended the call.',
    'reason.agent_hangup': 'The agent ended the call.',
    'reason.customer_lost': 'The connection was lost for too long.',
    'reason.customer_cancelled': 'You left the queue.',
    'reason.server_shutdown': 'The service is restarting. Please try again in a moment.',
    'reason.media_failed': 'The video connection failed.',
    'reason.connection_lost': 'The connection to the server was lost.',
    'reason.session_lost': 'Your previous session could not be resumed.',
    'reason.replaced': 'This session was resumed in another window.',
    'reason.abandoned': 'The session was abandoned.',
    'reason.failed': 'The session failed because of a server error.',
    'reason.unknown': 'The session ended.',

    'agentReason.customer_hangup': 'The customer ended the call.',
    'agentReason.agent_hangup': 'You ended the call.',
    'agentReason.customer_lost': 'The customer did not come back in time.',
    'agentReason.connection_lost': 'Your connection to the server was lost; the customer went back to the queue.',
    'agentReason.customer_cancelled': 'The customer left.',

    'withdrawn.timeout': 'The offer expired: you did not answer in time and are now away.',
    'withdrawn.customer_cancelled': 'The customer left the queue.',
    'withdrawn.customer_lost': 'The customer’s connection was lost.',
    'withdrawn.declined': 'You declined the customer.',
    'withdrawn.agent_lost': 'Your connection was lost.',
    'withdrawn.server_shutdown': 'The service is restarting.',
    'withdrawn.unknown': 'The offer was withdrawn.',

    'error.too_large': 'A message was too large and the connection was closed.',
    'error.rate_limited': 'Too many requests. Please slow down.',
    'error.bad_json': 'The server could not read a message.',
    'error.unknown_type': 'The server did not understand a request.',
    'error.invalid_message': 'A request was not valid.',
    'error.forbidden': 'You are not allowed to do that.',
    'error.not_authenticated': 'Your login has expired. Please log in again.',
    'error.bad_sdp': 'The video connection could not be negotiated.',
    'error.bad_state': 'That action is not possible right now.',
    'error.not_found': 'Not found.',
    'error.session_ended': 'This session has already ended.',
    'error.replaced': 'This connection was replaced by another window.',
    'error.media_error': 'A media error occurred on the server.',
    'error.unreachable': 'Cannot reach the server. Check your network and try again.',
    'error.generic': 'Something went wrong.',
    'error.close': 'Dismiss',

    'agent.loginTitle': 'Agent sign-in',
    'agent.username': 'Username',
    'agent.password': 'Password',
    'agent.login': 'Sign in',
    'agent.loggingIn': 'Signing in…',
    'agent.badCredentials': 'Wrong username or password.',
    'agent.tooMany': 'Too many failed attempts. Try again in a few minutes.',
    'agent.notAgent': 'This account is not an agent account.',
    'agent.loginFailed': 'Sign-in failed. Try again.',
    'agent.sessionExpired': 'Your session has expired. Please sign in again.',
    'agent.replaced': 'You signed in from another window. This window is disconnected.',
    'agent.logout': 'Sign out',
    'agent.skills': 'Skills',
    'agent.statusLabel': 'My status',
    'agent.toggleHintReady': 'Click to go away',
    'agent.toggleHintAway': 'Click to become ready',
    'agent.queueTitle': 'Waiting customers',
    'agent.queueTotal': 'Total',
    'agent.cameraTitle': 'My camera',
    'agent.cameraInCall': 'Your camera is shown in the call.',
    'agent.idleTitle': 'No customer yet',
    'agent.idleAway': 'You are away. Set yourself ready to receive customers.',
    'agent.idleReady': 'You are ready. The next matching customer will be offered to you.',
    'agent.offerTitle': 'Incoming customer',
    'agent.offerBusiness': 'Service',
    'agent.offerWaited': 'Waited',
    'agent.offerExpires': 'Answer within',
    'agent.offerExpired': 'Expired',
    'agent.seconds': '{n} s',
    'agent.accept': 'Accept',
    'agent.decline': 'Decline',
    'agent.customer': 'Customer',
    'agent.customerName': 'Name',
    'agent.customerBusiness': 'Service',
    'agent.customerSession': 'Session ID',
    'agent.endedTitle': 'Call ended',
    'agent.backToWork': 'Back to workbench',

    'status.ready': 'Ready',
    'status.away': 'Away',
    'status.offered': 'Offered',
    'status.busy': 'Busy',
    'status.unknown': 'Connecting…',

    'face.title': 'Face verification (optional)',
    'face.text': 'To confirm your identity quickly, your face in the video can be compared with the photo on your ID document. The photos are kept encrypted with the call record and used only for this check.',
    'face.accept': 'I agree that my face is compared with my ID photo to verify my identity',
    'face.acceptHint': 'Without it the agent verifies you manually.',
    'face.toggle': 'I agree to face verification (comparison with my ID photo)',
    'face.toggleOffHint': 'Face verification is off: the agent will verify you manually.',

    'idPhoto.title': 'Photo of your ID document',
    'idPhoto.hint': 'Upload a clear photo of the side of your ID card with your portrait: the agent can then verify you faster.',
    'idPhoto.choose': 'Upload ID photo',
    'idPhoto.replace': 'Upload another photo',
    'idPhoto.uploading': 'Uploading and checking the photo…',
    'idPhoto.ok': 'ID photo received ✓ It will be compared with your face in the call.',
    'idPhoto.preview': 'The photo you chose',
    'idPhoto.error.bad_image': 'This file is not a usable image. Please choose a JPEG or PNG photo.',
    'idPhoto.error.image_too_small': 'The photo is too small. Please take a closer, sharper photo of the ID card.',
    'idPhoto.error.image_too_large': 'The photo is too large (at most 15 MB). Please choose a smaller one.',
    'idPhoto.error.no_face': 'No face was found on this photo. Please photograph the side of the ID card with your portrait.',
    'idPhoto.error.multiple_faces': 'More than one face is on this photo. Please photograph only your own ID document.',
    'idPhoto.error.face_too_small': 'The portrait on this photo is too small. Please photograph the ID card from closer.',
    'idPhoto.error.face_consent_required': 'Please agree to face verification first.',
    'idPhoto.error.forbidden': 'Your session could not be confirmed. Please reload the page.',
    'idPhoto.error.not_found': 'Photo upload is not available right now. The agent will verify you in the call.',
    'idPhoto.error.unreachable': 'The photo could not be sent. Check your network and try again.',
    'idPhoto.error.generic': 'The photo could not be checked ({status}). Please try again.',
    'idPhoto.callSummary': 'Identity verification',

    'liveness.step.blink': 'Please blink',
    'liveness.step.turn_left': 'Please turn your head to your left',
    'liveness.step.turn_right': 'Please turn your head to your right',
    'liveness.progress': 'Step {n} of {total}',
    'liveness.seconds': '{n} s left',
    'liveness.passed': 'Liveness check passed.',
    'liveness.failed': 'Liveness check failed.',

    'identity.title': 'Identity verification',
    'identity.unavailable': 'Face checks are not active for this call. Verify the customer manually.',
    'identity.consent.true': 'Face consent given',
    'identity.consent.false': 'No face consent: verify manually',
    'identity.reference': 'ID photo',
    'identity.snapshot': 'Live snapshot',
    'identity.noReference': 'No ID photo yet',
    'identity.noSnapshot': 'No snapshot yet',
    'identity.imageUnavailable': 'Image unavailable',
    'identity.source.upload': 'uploaded by the customer',
    'identity.source.agent_capture': 'captured from the video',
    'identity.purpose.verification': 'verification',
    'identity.purpose.agent': 'snapshot',
    'identity.snapshots': 'Snapshots',
    'identity.verdict': 'Face comparison',
    'identity.verdict.none': 'Not compared yet',
    'identity.verdict.match': 'Same person ✓',
    'identity.verdict.mismatch': 'Not the same person ✗',
    'identity.verdict.unusable': 'Could not compare',
    'identity.score': 'Score {score}/100 · distance {distance} (threshold {threshold})',
    'identity.automatic': 'automatic',
    'identity.onRequest': 'on request',
    'identity.liveness': 'Liveness',
    'identity.liveness.none': 'Not done',
    'identity.liveness.running': 'In progress: {step}',
    'identity.liveness.passed': 'Passed ✓',
    'identity.liveness.failed': 'Failed ✗',
    'identity.step.blink': 'blink',
    'identity.step.turn_left': 'turn left',
    'identity.step.turn_right': 'turn right',
    'identity.presence.ok': 'Customer in frame',
    'identity.presence.missing': 'Customer left the frame',
    'identity.presence.multiple': 'Several people in frame ({n})',
    'identity.presence.mismatch': 'Face does not match the verified customer',
    'identity.presence.unknown': 'Not checked yet',
    'identity.presence.agentMissing': 'You are not in frame',
    'identity.presence.agentMultiple': 'Several people in your frame',
    'identity.busy.verifying': 'Comparing the face…',
    'identity.busy.liveness': 'Liveness check running on the customer’s screen…',
    'identity.busy.capturing_reference': 'Capturing the ID card…',
    'identity.verify': 'Verify face',
    'identity.livenessStart': 'Liveness check',
    'identity.captureSnapshot': 'Take snapshot',
    'identity.captureReference': 'Capture ID card',
    'identity.hint.consent': 'Face comparison and liveness need the customer’s face consent.',
    'identity.hint.reference': 'No ID photo yet: ask the customer to upload one, or to hold their ID card up to the camera and capture it.',
    'identity.manualTitle': 'Manual verification',
    'identity.manualReason': 'Reason (at least 3 characters)',
    'identity.manualPlaceholder': 'What did you check? e.g. compared the ID card held up to the camera with the customer',
    'identity.manualPass': 'Verified',
    'identity.manualFail': 'Not verified',
    'identity.manual.true': 'Verified manually',
    'identity.manual.false': 'Rejected manually',
    'identity.manualBy': '{result} by {by}: {reason}',
    'identity.manualSent': 'Sending…',

    'error.face_consent_required': 'The customer has not consented to face verification: verify them manually.',
    'error.no_reference': 'No ID photo yet: ask the customer to upload one, or capture the ID card from the video.',
    'error.no_video': 'No video from the customer yet.',
    'error.identity_busy': 'Another identity check is running. Wait for it to finish.',
    'error.identity_unavailable': 'Face checks are not available on this server.',

    'brand.audit': 'Quality inspection',
    'page.auditTitle': 'Video Counter · Quality inspection',

    'audit.loginTitle': 'Inspector sign-in',
    'audit.loginHint': 'For quality inspectors and administrators. Every replay and verdict is logged.',
    'audit.notAuditor': 'This account is not an inspector account.',
    'audit.role.auditor': 'Inspector',
    'audit.role.admin': 'Administrator',
    'audit.searchTitle': 'Search sessions',
    'audit.filterFrom': 'From (date)',
    'audit.filterTo': 'To (date)',
    'audit.filterAgent': 'Agent',
    'audit.filterAgentPlaceholder': 'Agent username',
    'audit.filterBusiness': 'Service',
    'audit.filterOutcome': 'Outcome',
    'audit.filterText': 'Customer name or session ID',
    'audit.filterTextPlaceholder': 'Search text',
    'audit.filterAnomalies': 'Anomalies only',
    'audit.datesUtc': 'Dates are in UTC.',
    'audit.all': 'All',
    'audit.search': 'Search',
    'audit.reset': 'Clear',
    'audit.resultsTitle': 'Sessions',
    'audit.total': '{n} session(s)',
    'audit.noResults': 'No session matches these filters.',
    'audit.page': 'Page {page} of {pages}',
    'audit.prev': 'Previous',
    'audit.next': 'Next',
    'audit.colTime': 'Time',
    'audit.colCustomer': 'Customer',
    'audit.colAgent': 'Agent',
    'audit.colBusiness': 'Service',
    'audit.colDuration': 'Duration',
    'audit.colOutcome': 'Outcome',
    'audit.colRecording': 'Recording',
    'audit.colAnomalies': 'Anomalies',
    'audit.colVerdict': 'Verdict',
    'audit.noAgent': '—',
    'audit.noVerdict': 'Not inspected',
    'audit.noAnomalies': 'None',
    'audit.backToResults': 'Back to results',
    'audit.loading': 'Loading…',
    'audit.sessionUnavailable': 'This session could not be loaded.',
    'audit.replayTitle': 'Dual recording',
    'audit.leg': 'Call leg',
    'audit.legOption': 'Leg {leg} · {duration} · {state}',
    'audit.partyCustomer': 'Customer',
    'audit.partyAgent': 'Agent',
    'audit.party.customer': 'customer',
    'audit.party.agent': 'agent',
    'audit.play': 'Play',
    'audit.pause': 'Pause',
    'audit.seek': 'Position in the recording',
    'audit.speed': 'Playback speed',
    'audit.timeline': 'Event timeline: click an event to jump to it',
    'audit.eventsTitle': 'Events in this recording',
    'audit.noEvents': 'No events.',
    'audit.noVideo': 'No video for this party',
    'audit.buffering': 'Loading…',
    'audit.videoError': 'The video could not be played',
    'audit.videoErrorDetail': 'The {party} video could not be played: {reason}',
    'audit.videoUndecodable': 'the file could not be decoded by this browser.',
    'audit.videoCookie': 'this browser’s login cookie is missing or belongs to another account (signed in elsewhere in this browser?). Sign out and sign in again.',
    'audit.playBlocked': 'The browser blocked playback. Click play again.',
    'audit.noRecording': 'No recording',
    'audit.noRecordingNotice': 'This session has no recording.',
    'audit.stillRecording': 'This call is still being recorded; the replay is available once it is finalised.',
    'audit.noOutputs': 'This recording has no playable media.',
    'audit.recoveredNotice': 'This recording was recovered after an interruption.',
    'audit.problemNotice': 'Recording problem: {problem}',
    'audit.cat.lifecycle': 'Call',
    'audit.cat.warning': 'Reconnect',
    'audit.cat.anomaly': 'Anomaly',
    'audit.cat.step': 'Identity / business step',
    'audit.cat.other': 'Other',
    'audit.integrity.checking': 'Checking integrity…',
    'audit.integrity.verified': 'Integrity verified ✓',
    'audit.integrity.failed': 'Integrity check failed: {reason}',
    'audit.integrity.checkedAt': 'Checked at {at}',
    'audit.detailsTitle': 'Session details',
    'audit.created': 'Joined',
    'audit.started': 'Call started',
    'audit.ended': 'Ended',
    'audit.endReason': 'End reason',
    'audit.retention': 'Kept until',
    'audit.legalHold': 'legal hold',
    'audit.sessionLog': 'Session log',
    'audit.verdictTitle': 'Verdict',
    'audit.verdictResult': 'Result',
    'audit.verdict.pass': 'Pass',
    'audit.verdict.fail': 'Fail',
    'audit.verdictNotes': 'Notes',
    'audit.verdictNotesPlaceholder': 'What did you check? Why does it fail?',
    'audit.verdictSubmit': 'Save verdict',
    'audit.verdictSubmitNew': 'Save new verdict',
    'audit.saving': 'Saving…',
    'audit.chooseResult': 'Choose pass or fail.',
    'audit.currentVerdict': 'Current verdict',
    'audit.verdictBy': '{result} · by {by} · {at}',
    'audit.verdictHistory': 'History',
    'audit.noVerdicts': 'No verdict yet.',
    'audit.superseded': 'superseded',
    'audit.error.forbidden': 'Your account may not do that (inspectors and administrators only).',
    'audit.error.notFound': 'Not found: it may have been deleted or not finalised yet.',
    'audit.error.status': 'Server error {status}: {message}',

    'audit.outcome.ended': 'Completed',
    'audit.outcome.abandoned': 'Abandoned',
    'audit.outcome.failed': 'Failed',
    'audit.outcome.active': 'In progress',
    'audit.outcome.queued': 'Queued',
    'audit.outcome.offered': 'Being offered',

    'audit.reason.customer_hangup': 'Customer hung up',
    'audit.reason.agent_hangup': 'Agent hung up',
    'audit.reason.customer_lost': 'Customer connection lost',
    'audit.reason.customer_cancelled': 'Customer left the queue',
    'audit.reason.agent_lost': 'Agent connection lost',
    'audit.reason.server_shutdown': 'Server shut down',
    'audit.reason.server_restart': 'Server restarted',
    'audit.reason.server_crash': 'Server crashed',
    'audit.reason.media_failed': 'Media connection failed',

    'audit.rec.recording': 'Recording',
    'audit.rec.finalized': 'Finalised',
    'audit.rec.recovered': 'Recovered',
    'audit.rec.failed': 'Failed',
    'audit.rec.none': 'None',

    'audit.anomaly.customer_disconnected': 'Customer disconnected',
    'audit.anomaly.agent_lost': 'Agent lost',
    'audit.anomaly.media_failed': 'Media failed',
    'audit.anomaly.recording_failed': 'Recording failed',
    'audit.anomaly.recording_recovered': 'Recording recovered',
    'audit.anomaly.session_failed': 'Session failed',
    'audit.anomaly.no_recording': 'No recording',
    'audit.anomaly.face_missing': 'Face missing',
    'audit.anomaly.multiple_faces': 'Several faces',
    'audit.anomaly.face_mismatch': 'Face mismatch',
    'audit.anomaly.identity_rejected': 'Face rejected',
    'audit.anomaly.liveness_failed': 'Liveness failed',

    'audit.kind.queued': 'Customer queued',
    'audit.kind.offered': 'Offered to agent',
    'audit.kind.offer_declined': 'Agent declined',
    'audit.kind.offer_timeout': 'Offer timed out',
    'audit.kind.call_started': 'Call started',
    'audit.kind.media_negotiated': 'Media negotiated',
    'audit.kind.media_connected': 'Media connected',
    'audit.kind.media_disconnected': 'Media interrupted',
    'audit.kind.media_failed': 'Media failed',
    'audit.kind.media_closed': 'Media closed',
    'audit.kind.recording_started': 'Recording started',
    'audit.kind.recording_stopped': 'Recording stopped',
    'audit.kind.recording_alert': 'Recording alert',
    'audit.kind.customer_disconnected': 'Customer disconnected',
    'audit.kind.customer_rejoined': 'Customer rejoined',
    'audit.kind.agent_lost': 'Agent connection lost',
    'audit.kind.requeued': 'Customer requeued',
    'audit.kind.ended': 'Call ended',
    'audit.kind.abandoned': 'Session abandoned',
    'audit.kind.failed': 'Session failed',
    'audit.kind.face_missing': 'Face missing',
    'audit.kind.multiple_faces': 'Several faces',
    'audit.kind.face_mismatch': 'Face mismatch',
    'audit.kind.face_consent': 'Face consent',
    'audit.kind.reference_added': 'ID photo added',
    'audit.kind.reference_in_use': 'ID photo in use',
    'audit.kind.identity_verified': 'Face verified',
    'audit.kind.identity_rejected': 'Face rejected',
    'audit.kind.identity_unusable': 'Face check not possible',
    'audit.kind.identity_manual': 'Manual verification',
    'audit.kind.identity_error': 'Identity check error',
    'audit.kind.liveness_started': 'Liveness check started',
    'audit.kind.liveness_passed': 'Liveness passed',
    'audit.kind.liveness_failed': 'Liveness failed',
    'audit.kind.snapshot_captured': 'Snapshot taken',
    'audit.kind.face_returned': 'Face back in frame',
    'audit.kind.multiple_faces_ended': 'Alone in frame again',
    'audit.kind.face_match_restored': 'Face matches again',
    'audit.evidenceTitle': 'Identity evidence',
    'audit.evidenceEmpty': 'No identity evidence for this session.',
    'audit.evidenceOpen': 'Open the image',
    'audit.evidenceUnavailable': 'Image unavailable',
    'audit.evidence.reference_image': 'ID photo',
    'audit.evidence.reference_embedding': 'Face template (ID photo)',
    'audit.evidence.live_embedding': 'Face template (live)',
    'audit.evidence.snapshot': 'Snapshot',
    'audit.evidence.receipt': 'Receipt',
  },

  zh: {
    'lang.switch': 'English',
    'lang.switchLabel': '切换为英文',

    'brand.name': '远程视频柜台',
    'brand.agent': '坐席工作台',
    'page.customerTitle': '远程视频柜台',
    'page.agentTitle': '远程视频柜台 · 坐席工作台',

    'state.idle': '未排队',
    'state.waiting': '排队中',
    'state.offered': '新客户接入',
    'state.active': '通话中',
    'state.ended': '已结束',
    'state.agentIdle': '空闲',

    'business.account_opening': '远程开户',
    'business.loan_signing': '贷款面签',
    'business.wealth_product': '理财双录',
    'business.account_opening.desc': '由坐席核验身份，在线开立新账户',
    'business.loan_signing.desc': '与坐席视频面对面签署贷款合同',
    'business.wealth_product.desc': '购买理财产品，按规定全程录音录像',

    'customer.step1': '请问您要办理什么业务？',
    'customer.step1Hint': '选择业务后加入排队，坐席将通过视频为您服务。',
    'customer.nameLabel': '您的称呼（选填）',
    'customer.namePlaceholder': '坐席应如何称呼您？',
    'customer.defaultName': '客户',
    'customer.chooseBusiness': '请先选择要办理的业务。',
    'customer.step2': '检查摄像头和麦克风',
    'customer.step2Hint': '请确保光线充足，面部清晰可见。',
    'customer.micLabel': '麦克风音量',
    'customer.micHint': '请说话，音量条应随之跳动。',
    'customer.join': '加入排队',
    'customer.recordingTitle': '本次通话将全程录音录像',
    'customer.recordingText': '根据银行业监管要求，本次通话（您与柜员双方的音视频）将全程录音录像，按法定期限加密保存，仅供本行质检人员审查。',
    'customer.recordingAccept': '我已知悉并同意本次通话全程录音录像',
    'customer.joining': '正在连接…',
    'customer.privacy': '为保障您的权益，视频通话将依据金融监管要求全程录音录像。请勿向任何人（包括坐席）透露密码或验证码。',

    'device.starting': '正在打开摄像头和麦克风…',
    'device.ok': '摄像头和麦克风工作正常。',
    'device.denied': '摄像头或麦克风权限被拒绝。请在浏览器设置（地址栏图标）中允许访问后重试。',
    'device.missing': '未找到摄像头或麦克风。请连接设备后重试。',
    'device.busy': '摄像头或麦克风正被其他应用占用。请关闭该应用后重试。',
    'device.insecure': '此页面无法使用摄像头：必须通过 HTTPS 打开。',
    'device.failed': '无法启动摄像头或麦克风，请重试。',
    'device.ended': '摄像头或麦克风已断开，请重试。',
    'device.retry': '重试',
    'device.noPreview': '摄像头预览',

    'queue.title': '您正在排队',
    'queue.service': '办理业务',
    'queue.position': '当前排位',
    'queue.wait': '预计等待',
    'queue.agents': '空闲坐席：{n} 位',
    'queue.hint': '请保持本页面打开，坐席空闲后将立即为您接通。',
    'queue.cancel': '退出排队',
    'queue.offered': '坐席即将接听…',

    'wait.lessThanMinute': '不到 1 分钟',
    'wait.minutes': '约 {n} 分钟',
    'wait.hours': '约 {h} 小时 {m} 分钟',

    'call.agent': '坐席',
    'call.you': '我',
    'call.mute': '静音',
    'call.unmute': '取消静音',
    'call.cameraOff': '关闭摄像头',
    'call.cameraOn': '打开摄像头',
    'call.hangup': '挂断',
    'call.tapToPlay': '点击此处收听并观看坐席画面',
    'call.tapToPlayCustomer': '点击此处收听并观看客户画面',
    'call.connecting': '正在连接视频…',
    'call.mediaUnstable': '网络不稳定，正在尽力保持通话…',
    'call.mediaRetry': '视频连接中断，正在重新连接…',
    'call.mediaFailed': '无法建立视频连接，请检查网络。',
    'call.duration': '通话时长',

    'notice.peerReconnectingAgent': '坐席网络中断，请稍候…',
    'notice.peerReconnectingCustomer': '客户网络中断，最多等待 {n} 秒重新连接…',
    'notice.peerReconnected': '连接已恢复。',
    'notice.requeued': '坐席连接已断开，您已回到队列最前面。',
    'notice.resuming': '正在恢复您的会话…',

    'banner.reconnecting': '连接已断开，正在重新连接…',
    'banner.offline': '您已离线。',
    'banner.reconnect': '重新连接',

    'ended.title': '本次服务已结束',
    'ended.thanks': '感谢您使用远程视频柜台。',
    'ended.again': '重新开始',

    'reason.customer_hangup': '您已挂断通话。',
    'reason.agent_hangup': '坐席已结束通话。',
    'reason.customer_lost': '网络中断时间过长，会话已结束。',
    'reason.customer_cancelled': '您已退出排队。',
    'reason.server_shutdown': '服务正在重启，请稍后再试。',
    'reason.media_failed': '视频连接失败。',
    'reason.connection_lost': '与服务器的连接已断开。',
    'reason.session_lost': '无法恢复您之前的会话。',
    'reason.replaced': '此会话已在其他窗口中恢复。',
    'reason.abandoned': '会话已放弃。',
    'reason.failed': '服务器出错，会话已终止。',
    'reason.unknown': '会话已结束。',

    'agentReason.customer_hangup': '客户已挂断通话。',
    'agentReason.agent_hangup': '您已结束通话。',
    'agentReason.customer_lost': '客户未能及时重新连接。',
    'agentReason.connection_lost': '您与服务器的连接已断开，客户已回到队列。',
    'agentReason.customer_cancelled': '客户已离开。',

    'withdrawn.timeout': '接入超时：您未及时应答，状态已改为离开。',
    'withdrawn.customer_cancelled': '客户已退出排队。',
    'withdrawn.customer_lost': '客户网络已断开。',
    'withdrawn.declined': '您已拒绝该客户。',
    'withdrawn.agent_lost': '您的连接已断开。',
    'withdrawn.server_shutdown': '服务正在重启。',
    'withdrawn.unknown': '该客户已被撤回。',

    'error.too_large': '消息过大，连接已关闭。',
    'error.rate_limited': '操作过于频繁，请稍候。',
    'error.bad_json': '服务器无法读取消息。',
    'error.unknown_type': '服务器无法识别该请求。',
    'error.invalid_message': '请求无效。',
    'error.forbidden': '您无权执行此操作。',
    'error.not_authenticated': '登录已过期，请重新登录。',
    'error.bad_sdp': '视频连接协商失败。',
    'error.bad_state': '当前状态下无法执行此操作。',
    'error.not_found': '未找到。',
    'error.session_ended': '该会话已结束。',
    'error.replaced': '此连接已被其他窗口取代。',
    'error.media_error': '服务器媒体处理出错。',
    'error.unreachable': '无法连接服务器，请检查网络后重试。',
    'error.generic': '出现错误。',
    'error.close': '关闭',

    'agent.loginTitle': '坐席登录',
    'agent.username': '用户名',
    'agent.password': '密码',
    'agent.login': '登录',
    'agent.loggingIn': '正在登录…',
    'agent.badCredentials': '用户名或密码错误。',
    'agent.tooMany': '失败次数过多，请几分钟后再试。',
    'agent.notAgent': '该账号不是坐席账号。',
    'agent.loginFailed': '登录失败，请重试。',
    'agent.sessionExpired': '登录已过期，请重新登录。',
    'agent.replaced': '您已在其他窗口登录，本窗口已断开。',
    'agent.logout': '退出登录',
    'agent.skills': '技能',
    'agent.statusLabel': '我的状态',
    'agent.toggleHintReady': '点击切换为离开',
    'agent.toggleHintAway': '点击切换为就绪',
    'agent.queueTitle': '排队客户',
    'agent.queueTotal': '合计',
    'agent.cameraTitle': '我的摄像头',
    'agent.cameraInCall': '您的画面正在通话中显示。',
    'agent.idleTitle': '暂无客户',
    'agent.idleAway': '您当前为离开状态，切换为就绪后即可接入客户。',
    'agent.idleReady': '您已就绪，符合技能的下一位客户将分配给您。',
    'agent.offerTitle': '新客户接入',
    'agent.offerBusiness': '办理业务',
    'agent.offerWaited': '已等待',
    'agent.offerExpires': '剩余应答时间',
    'agent.offerExpired': '已超时',
    'agent.seconds': '{n} 秒',
    'agent.accept': '接听',
    'agent.decline': '拒绝',
    'agent.customer': '客户',
    'agent.customerName': '姓名',
    'agent.customerBusiness': '业务',
    'agent.customerSession': '会话编号',
    'agent.endedTitle': '通话已结束',
    'agent.backToWork': '返回工作台',

    'status.ready': '就绪',
    'status.away': '离开',
    'status.offered': '待接听',
    'status.busy': '通话中',
    'status.unknown': '连接中…',

    'face.title': '人脸识别授权（可选）',
    'face.text': '为快速核验您的身份，可将视频中的人脸与您证件上的照片进行比对。照片随通话记录加密保存，仅用于本次核验。',
    'face.accept': '我同意将我的人脸与证件照片进行比对，以核验本人身份',
    'face.acceptHint': '不同意时，将由坐席人工核验您的身份。',
    'face.toggle': '我同意人脸识别核验（与证件照片比对）',
    'face.toggleOffHint': '人脸识别未授权，坐席将人工核验您的身份。',

    'idPhoto.title': '证件照片',
    'idPhoto.hint': '请上传身份证人像面的清晰照片，以便坐席更快核验您的身份。',
    'idPhoto.choose': '上传证件照片',
    'idPhoto.replace': '重新上传',
    'idPhoto.uploading': '正在上传并检查照片…',
    'idPhoto.ok': '证件照片已收到 ✓ 通话中将与您的人脸进行比对。',
    'idPhoto.preview': '您选择的照片',
    'idPhoto.error.bad_image': '该文件不是可用的图片，请选择 JPEG 或 PNG 照片。',
    'idPhoto.error.image_too_small': '照片太小，请靠近证件拍摄更清晰的照片。',
    'idPhoto.error.image_too_large': '照片太大（不超过 15 MB），请选择较小的照片。',
    'idPhoto.error.no_face': '照片中未检测到人脸，请拍摄身份证人像面。',
    'idPhoto.error.multiple_faces': '照片中有多张人脸，请只拍摄您本人的证件。',
    'idPhoto.error.face_too_small': '照片中的人像太小，请靠近证件拍摄。',
    'idPhoto.error.face_consent_required': '请先同意人脸识别授权。',
    'idPhoto.error.forbidden': '无法确认您的会话，请刷新页面。',
    'idPhoto.error.not_found': '暂时无法上传照片，坐席将在通话中核验您的身份。',
    'idPhoto.error.unreachable': '照片发送失败，请检查网络后重试。',
    'idPhoto.error.generic': '照片检查失败（{status}），请重试。',
    'idPhoto.callSummary': '身份核验',

    'liveness.step.blink': '请眨眨眼',
    'liveness.step.turn_left': '请向左转头',
    'liveness.step.turn_right': '请向右转头',
    'liveness.progress': '第 {n} 步，共 {total} 步',
    'liveness.seconds': '剩余 {n} 秒',
    'liveness.passed': '活体检测通过。',
    'liveness.failed': '活体检测未通过。',

    'identity.title': '身份核验',
    'identity.unavailable': '本次通话未启用人脸核验，请人工核验客户身份。',
    'identity.consent.true': '已授权人脸识别',
    'identity.consent.false': '未授权人脸识别，请人工核验',
    'identity.reference': '证件照片',
    'identity.snapshot': '现场抓拍',
    'identity.noReference': '暂无证件照片',
    'identity.noSnapshot': '暂无抓拍',
    'identity.imageUnavailable': '图片无法显示',
    'identity.source.upload': '客户上传',
    'identity.source.agent_capture': '视频截取',
    'identity.purpose.verification': '比对',
    'identity.purpose.agent': '抓拍',
    'identity.snapshots': '抓拍记录',
    'identity.verdict': '人脸比对',
    'identity.verdict.none': '尚未比对',
    'identity.verdict.match': '人证一致 ✓',
    'identity.verdict.mismatch': '人证不一致 ✗',
    'identity.verdict.unusable': '无法比对',
    'identity.score': '相似度 {score}/100 · 距离 {distance}（阈值 {threshold}）',
    'identity.automatic': '自动',
    'identity.onRequest': '坐席发起',
    'identity.liveness': '活体检测',
    'identity.liveness.none': '未进行',
    'identity.liveness.running': '进行中：{step}',
    'identity.liveness.passed': '通过 ✓',
    'identity.liveness.failed': '未通过 ✗',
    'identity.step.blink': '眨眼',
    'identity.step.turn_left': '向左转头',
    'identity.step.turn_right': '向右转头',
    'identity.presence.ok': '客户在镜',
    'identity.presence.missing': '客户离开画面',
    'identity.presence.multiple': '画面中有多人（{n}）',
    'identity.presence.mismatch': '人脸与已核验客户不一致',
    'identity.presence.unknown': '尚未检测',
    'identity.presence.agentMissing': '您不在画面中',
    'identity.presence.agentMultiple': '您的画面中有多人',
    'identity.busy.verifying': '正在比对人脸…',
    'identity.busy.liveness': '客户正在进行活体检测…',
    'identity.busy.capturing_reference': '正在截取证件照片…',
    'identity.verify': '人脸比对',
    'identity.livenessStart': '活体检测',
    'identity.captureSnapshot': '抓拍',
    'identity.captureReference': '截取证件照',
    'identity.hint.consent': '人脸比对和活体检测需要客户授权人脸识别。',
    'identity.hint.reference': '暂无证件照片：请客户上传，或请客户将身份证举到摄像头前后截取。',
    'identity.manualTitle': '人工核验',
    'identity.manualReason': '核验说明（至少 3 个字）',
    'identity.manualPlaceholder': '核验了哪些内容？例如：已核对客户手持身份证与本人一致',
    'identity.manualPass': '核验通过',
    'identity.manualFail': '核验不通过',
    'identity.manual.true': '人工核验通过',
    'identity.manual.false': '人工核验不通过',
    'identity.manualBy': '{result}（{by}）：{reason}',
    'identity.manualSent': '正在提交…',

    'error.face_consent_required': '客户未授权人脸识别，请人工核验。',
    'error.no_reference': '暂无证件照片：请客户上传，或从视频中截取证件照。',
    'error.no_video': '尚未收到客户的视频画面。',
    'error.identity_busy': '另一项身份核验正在进行，请稍候。',
    'error.identity_unavailable': '本服务器未启用人脸核验。',

    'brand.audit': '质检工作台',
    'page.auditTitle': '远程视频柜台 · 质检工作台',

    'audit.loginTitle': '质检登录',
    'audit.loginHint': '仅限质检人员和管理员。每次回放和质检结论都会记入审计日志。',
    'audit.notAuditor': '该账号不是质检账号。',
    'audit.role.auditor': '质检员',
    'audit.role.admin': '管理员',
    'audit.searchTitle': '会话检索',
    'audit.filterFrom': '起始日期',
    'audit.filterTo': '截止日期',
    'audit.filterAgent': '坐席',
    'audit.filterAgentPlaceholder': '坐席用户名',
    'audit.filterBusiness': '业务类型',
    'audit.filterOutcome': '会话结果',
    'audit.filterText': '客户姓名或会话编号',
    'audit.filterTextPlaceholder': '搜索',
    'audit.filterAnomalies': '仅看异常会话',
    'audit.datesUtc': '日期按 UTC 计算。',
    'audit.all': '全部',
    'audit.search': '查询',
    'audit.reset': '清空',
    'audit.resultsTitle': '会话列表',
    'audit.total': '共 {n} 条',
    'audit.noResults': '没有符合条件的会话。',
    'audit.page': '第 {page} / {pages} 页',
    'audit.prev': '上一页',
    'audit.next': '下一页',
    'audit.colTime': '时间',
    'audit.colCustomer': '客户',
    'audit.colAgent': '坐席',
    'audit.colBusiness': '业务',
    'audit.colDuration': '时长',
    'audit.colOutcome': '结果',
    'audit.colRecording': '录像',
    'audit.colAnomalies': '异常',
    'audit.colVerdict': '质检结论',
    'audit.noAgent': '—',
    'audit.noVerdict': '未质检',
    'audit.noAnomalies': '无',
    'audit.backToResults': '返回列表',
    'audit.loading': '正在加载…',
    'audit.sessionUnavailable': '无法加载该会话。',
    'audit.replayTitle': '双录回放',
    'audit.leg': '通话段',
    'audit.legOption': '第 {leg} 段 · {duration} · {state}',
    'audit.partyCustomer': '客户',
    'audit.partyAgent': '坐席',
    'audit.party.customer': '客户',
    'audit.party.agent': '坐席',
    'audit.play': '播放',
    'audit.pause': '暂停',
    'audit.seek': '播放进度',
    'audit.speed': '播放速度',
    'audit.timeline': '事件时间轴：点击事件跳转到该时刻',
    'audit.eventsTitle': '本段录像中的事件',
    'audit.noEvents': '无事件。',
    'audit.noVideo': '该方无视频',
    'audit.buffering': '正在加载…',
    'audit.videoError': '视频无法播放',
    'audit.videoErrorDetail': '{party}视频无法播放：{reason}',
    'audit.videoUndecodable': '浏览器无法解码该文件。',
    'audit.videoCookie': '本浏览器的登录 Cookie 已失效或属于其他账号（是否在本浏览器的其他页面登录了别的账号？），请退出后重新登录。',
    'audit.playBlocked': '浏览器阻止了播放，请再次点击播放。',
    'audit.noRecording': '无录像',
    'audit.noRecordingNotice': '该会话没有录像。',
    'audit.stillRecording': '该通话仍在录制中，录像封存后方可回放。',
    'audit.noOutputs': '该录像没有可播放的音视频。',
    'audit.recoveredNotice': '该录像在中断后经恢复生成。',
    'audit.problemNotice': '录像问题：{problem}',
    'audit.cat.lifecycle': '通话',
    'audit.cat.warning': '断线重连',
    'audit.cat.anomaly': '异常',
    'audit.cat.step': '身份核验 / 业务环节',
    'audit.cat.other': '其他',
    'audit.integrity.checking': '正在校验完整性…',
    'audit.integrity.verified': '完整性校验通过 ✓',
    'audit.integrity.failed': '完整性校验失败：{reason}',
    'audit.integrity.checkedAt': '校验时间 {at}',
    'audit.detailsTitle': '会话信息',
    'audit.created': '接入时间',
    'audit.started': '开始通话',
    'audit.ended': '结束时间',
    'audit.endReason': '结束原因',
    'audit.retention': '保存期限',
    'audit.legalHold': '司法冻结',
    'audit.sessionLog': '会话日志',
    'audit.verdictTitle': '质检结论',
    'audit.verdictResult': '结论',
    'audit.verdict.pass': '合格',
    'audit.verdict.fail': '不合格',
    'audit.verdictNotes': '备注',
    'audit.verdictNotesPlaceholder': '检查了哪些内容？不合格的原因？',
    'audit.verdictSubmit': '提交结论',
    'audit.verdictSubmitNew': '提交新结论',
    'audit.saving': '正在保存…',
    'audit.chooseResult': '请选择合格或不合格。',
    'audit.currentVerdict': '当前结论',
    'audit.verdictBy': '{result} · {by} · {at}',
    'audit.verdictHistory': '历史记录',
    'audit.noVerdicts': '尚无质检结论。',
    'audit.superseded': '已被取代',
    'audit.error.forbidden': '您的账号无权执行此操作（仅限质检人员和管理员）。',
    'audit.error.notFound': '未找到：可能已被删除或尚未封存。',
    'audit.error.status': '服务器错误 {status}：{message}',

    'audit.outcome.ended': '已完成',
    'audit.outcome.abandoned': '已放弃',
    'audit.outcome.failed': '失败',
    'audit.outcome.active': '进行中',
    'audit.outcome.queued': '排队中',
    'audit.outcome.offered': '分配中',

    'audit.reason.customer_hangup': '客户挂断',
    'audit.reason.agent_hangup': '坐席挂断',
    'audit.reason.customer_lost': '客户网络中断',
    'audit.reason.customer_cancelled': '客户退出排队',
    'audit.reason.agent_lost': '坐席网络中断',
    'audit.reason.server_shutdown': '服务器关闭',
    'audit.reason.server_restart': '服务器重启',
    'audit.reason.server_crash': '服务器崩溃',
    'audit.reason.media_failed': '音视频连接失败',

    'audit.rec.recording': '录制中',
    'audit.rec.finalized': '已封存',
    'audit.rec.recovered': '已恢复',
    'audit.rec.failed': '失败',
    'audit.rec.none': '无',

    'audit.anomaly.customer_disconnected': '客户断线',
    'audit.anomaly.agent_lost': '坐席断线',
    'audit.anomaly.media_failed': '音视频失败',
    'audit.anomaly.recording_failed': '录像失败',
    'audit.anomaly.recording_recovered': '录像经恢复',
    'audit.anomaly.session_failed': '会话失败',
    'audit.anomaly.no_recording': '无录像',
    'audit.anomaly.face_missing': '人脸缺失',
    'audit.anomaly.multiple_faces': '多人入镜',
    'audit.anomaly.face_mismatch': '人脸不符',
    'audit.anomaly.identity_rejected': '人证不一致',
    'audit.anomaly.liveness_failed': '活体检测未通过',

    'audit.kind.queued': '客户排队',
    'audit.kind.offered': '分配给坐席',
    'audit.kind.offer_declined': '坐席拒绝',
    'audit.kind.offer_timeout': '分配超时',
    'audit.kind.call_started': '通话开始',
    'audit.kind.media_negotiated': '媒体协商完成',
    'audit.kind.media_connected': '音视频已连通',
    'audit.kind.media_disconnected': '音视频中断',
    'audit.kind.media_failed': '音视频失败',
    'audit.kind.media_closed': '音视频关闭',
    'audit.kind.recording_started': '开始录像',
    'audit.kind.recording_stopped': '停止录像',
    'audit.kind.recording_alert': '录像告警',
    'audit.kind.customer_disconnected': '客户断线',
    'audit.kind.customer_rejoined': '客户重连',
    'audit.kind.agent_lost': '坐席断线',
    'audit.kind.requeued': '客户重新排队',
    'audit.kind.ended': '通话结束',
    'audit.kind.abandoned': '会话放弃',
    'audit.kind.failed': '会话失败',
    'audit.kind.face_missing': '人脸缺失',
    'audit.kind.multiple_faces': '多人入镜',
    'audit.kind.face_mismatch': '人脸不符',
    'audit.kind.face_consent': '人脸识别授权',
    'audit.kind.reference_added': '添加证件照片',
    'audit.kind.reference_in_use': '使用证件照片',
    'audit.kind.identity_verified': '人证比对通过',
    'audit.kind.identity_rejected': '人证比对不一致',
    'audit.kind.identity_unusable': '无法人脸比对',
    'audit.kind.identity_manual': '人工核验',
    'audit.kind.identity_error': '身份核验出错',
    'audit.kind.liveness_started': '开始活体检测',
    'audit.kind.liveness_passed': '活体检测通过',
    'audit.kind.liveness_failed': '活体检测未通过',
    'audit.kind.snapshot_captured': '现场抓拍',
    'audit.kind.face_returned': '人脸回到画面',
    'audit.kind.multiple_faces_ended': '多人入镜结束',
    'audit.kind.face_match_restored': '人脸恢复一致',
    'audit.evidenceTitle': '身份核验证据',
    'audit.evidenceEmpty': '该会话没有身份核验证据。',
    'audit.evidenceOpen': '查看原图',
    'audit.evidenceUnavailable': '图片无法显示',
    'audit.evidence.reference_image': '证件照片',
    'audit.evidence.reference_embedding': '人脸特征（证件照）',
    'audit.evidence.live_embedding': '人脸特征（现场）',
    'audit.evidence.snapshot': '现场抓拍',
    'audit.evidence.receipt': '回执',
  },
};

function detect() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (LANGS.includes(saved)) return saved;
  } catch {
    // storage disabled: fall through to the browser's language
  }
  const preferred = (navigator.languages && navigator.languages[0]) || navigator.language || '';
  return preferred.toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

let current = detect();
const listeners = [];
/** The business types the counter serves (each has built-in names under "business."). */
export const BUSINESSES = ['account_opening', 'loan_signing', 'wealth_product'];
/** Business names from GET /api/config, by type: {en, zh}. */
const businessNames = new Map();

/** The string for `key` in the current language, with {name} placeholders filled. */
export function t(key, params = {}) {
  const table = STRINGS[current];
  let text = table[key] ?? STRINGS.en[key] ?? key;
  for (const [name, value] of Object.entries(params)) {
    text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}

/**
 * A sentence the server sends in both languages (`message`, `message_zh`): the
 * one for the current language, or whichever is there.
 */
export function serverText(en, zh) {
  const first = current === 'zh' ? zh : en;
  const second = current === 'zh' ? en : zh;
  if (typeof first === 'string' && first) return first;
  return typeof second === 'string' ? second : '';
}

/** Whether a key exists (used to fall back for unknown server codes). */
export function has(key) {
  return key in STRINGS.en;
}

export function setLang(next) {
  if (!LANGS.includes(next) || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not persisted; still switched for this page
  }
  applyI18n();
  for (const fn of listeners) fn(current);
}

export function onLangChange(fn) {
  listeners.push(fn);
}

/** Fill every marked element under `root` with the current language. */
export function applyI18n(root = document) {
  document.documentElement.lang = current === 'zh' ? 'zh-CN' : 'en';
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll('[data-i18n-aria-label]')) {
    el.setAttribute('aria-label', t(el.dataset.i18nAriaLabel));
  }
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
}

/** Wire the language toggle button: it shows the language it switches to. */
export function bindLangToggle(button) {
  button.dataset.i18n = 'lang.switch';
  button.dataset.i18nAriaLabel = 'lang.switchLabel';
  button.addEventListener('click', () => setLang(current === 'zh' ? 'en' : 'zh'));
}

/**
 * GET /api/config and remember its business names; resolves to the config, or
 * to null when it cannot be had (the built-in names stay).
 */
export async function loadBusinessNames() {
  try {
    const response = await fetch('/api/config', { headers: { Accept: 'application/json' } });
    if (!response.ok) return null;
    const config = await response.json();
    setBusinessNames(config.businesses);
    return config;
  } catch (err) {
    console.info('using built-in business names', err);
    return null;
  }
}

/** Remember the business names served by GET /api/config (`businesses[]`). */
export function setBusinessNames(list) {
  if (!Array.isArray(list)) return;
  for (const item of list) {
    if (item && typeof item.type === 'string') {
      businessNames.set(item.type, { en: item.name_en, zh: item.name_zh });
    }
  }
}

export function businessName(type) {
  const served = businessNames.get(type)?.[current];
  if (typeof served === 'string' && served) return served;
  const key = `business.${type}`;
  return has(key) ? t(key) : String(type ?? '');
}

/** A queue estimate in words ("about 3 min"). */
export function formatWait(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  if (s < 60) return t('wait.lessThanMinute');
  const minutes = Math.round(s / 60);
  if (minutes < 60) return t('wait.minutes', { n: minutes });
  return t('wait.hours', { h: Math.floor(minutes / 60), m: minutes % 60 });
}

/** m:ss (or h:mm:ss) for durations shown as a clock. */
export function formatClock(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

/** Localized text for a server `error` frame: our string for known codes, else the server's. */
export function errorText(code, message) {
  const key = `error.${code}`;
  if (has(key)) return t(key);
  return message ? String(message) : t('error.generic');
}

/** Localized reason; `prefix` is "reason", "agentReason" or "withdrawn". */
export function reasonText(prefix, reason) {
  const key = `${prefix}.${reason}`;
  if (has(key)) return t(key);
  if (prefix === 'agentReason' && has(`reason.${reason}`)) return t(`reason.${reason}`);
  return t(`${prefix === 'withdrawn' ? 'withdrawn' : 'reason'}.unknown`);
}
