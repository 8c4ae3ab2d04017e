//! Single sign-on in Chromium (being written).
