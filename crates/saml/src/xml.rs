//! Strict, namespace-aware XML reading helpers (roxmltree: no DTD, bounded node count).

use roxmltree::{Document, Node, NodeType, ParsingOptions};

pub(crate) const NS_PROTOCOL: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub(crate) const NS_ASSERTION: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub(crate) const NS_METADATA: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
pub(crate) const NS_DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";

/// Node budget for one document: far above any real response or metadata, far below memory trouble.
const NODES_LIMIT: u32 = 200_000;

/// Parses `text` strictly: well-formed, no DTD at all (not even an empty `<!DOCTYPE>`), bounded size.
pub(crate) fn parse(text: &str) -> Option<Document<'_>> {
    if text.contains("<!DOCTYPE") {
        return None;
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: NODES_LIMIT,
        ..ParsingOptions::default()
    };
    Document::parse_with_options(text, options).ok()
}

pub(crate) fn is(node: Node<'_, '_>, ns: &str, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace() == Some(ns)
}

/// Element children of `node` named `{ns}name`.
pub(crate) fn children<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    ns: &'a str,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.children().filter(move |c| is(*c, ns, name))
}

/// The only element child `{ns}name`: `Ok(None)` when absent, `Err(())` when repeated.
pub(crate) fn only_child<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    ns: &'a str,
    name: &'a str,
) -> Result<Option<Node<'a, 'input>>, ()> {
    let mut found = children(node, ns, name);
    let first = found.next();
    if found.next().is_some() { Err(()) } else { Ok(first) }
}

/// Text content of an element that must hold text only (no child elements, comments or PIs).
pub(crate) fn text_only(node: Node<'_, '_>) -> Option<String> {
    let mut out = String::new();
    for child in node.children() {
        match child.node_type() {
            NodeType::Text => out.push_str(child.text().unwrap_or_default()),
            _ => return None,
        }
    }
    Some(out)
}

/// True when the document holds comments or processing instructions anywhere (they can split text).
pub(crate) fn has_comments_or_pis(doc: &Document<'_>) -> bool {
    doc.descendants()
        .any(|n| matches!(n.node_type(), NodeType::Comment | NodeType::PI))
}
