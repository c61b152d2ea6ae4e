//! What the model sees: the history window, the system prompt, the request's
//! parameters, and the title cut (SPEC sections 5 and 6).

use crate::adapters::store::Message;
use crate::adapters::upstream::{ChatParams, InferenceRequest, Turn};
use crate::foundation::config::Config;
use crate::foundation::role::Role;

pub const SYS_DEFAULT: &str = "You are samosaChaat, a helpful AI assistant created by Manmohan Sharma. \
You have access to tools: use web_search for facts that may change over time or \
require current information, and use calculator for arithmetic. Otherwise answer directly and concisely.";

pub const SYS_THINK: &str = "You are samosaChaat, a helpful AI assistant created by Manmohan Sharma. \
You have access to tools: use web_search for facts that may change over time or \
require current information, and use calculator for arithmetic. \
Think step by step inside <think>...</think> tags, then give your final answer after the closing tag.";

pub const TITLE_CHARS: usize = 80;

/// The window sent upstream, from turns ordered oldest first: the newest
/// `max_history`, then the oldest dropped while the content exceeds `budget`
/// characters. The newest turn always stays, however long it is.
pub fn history_window(turns: &[Turn], max_history: usize, budget: usize) -> &[Turn] {
    let start = turns.len().saturating_sub(max_history.max(1));
    let mut window = &turns[start..];
    let mut total: usize = window.iter().map(|t| t.content.chars().count()).sum();
    while window.len() > 1 && total > budget {
        total -= window[0].content.chars().count();
        window = &window[1..];
    }
    window
}

/// Prepends the system prompt to the first user turn of the window: the model
/// ignores a system role, and the upstream splits the prompt off at the blank line.
pub fn with_system_prompt(window: &[Turn], thinking_mode: bool) -> Vec<Turn> {
    let prompt = if thinking_mode {
        SYS_THINK
    } else {
        SYS_DEFAULT
    };
    let mut out = window.to_vec();
    if let Some(first_user) = out.iter_mut().find(|t| t.role == Role::User) {
        first_user.content = format!("{prompt}\n\n{}", first_user.content);
    }
    out
}

/// The upstream request: the history window of `turns` (oldest first), the
/// system prompt, and the parameters, the configuration's defaults where the
/// request left them null.
pub fn upstream_request(config: &Config, turns: &[Turn], params: &ChatParams) -> InferenceRequest {
    let window = history_window(turns, config.max_history, config.max_token_budget);
    let messages = with_system_prompt(window, params.thinking_mode);
    InferenceRequest::new(messages, params, &config.defaults)
}

/// A stored message as the upstream receives it.
pub fn turn(message: &Message) -> Turn {
    Turn {
        role: message.role,
        content: message.content.clone(),
    }
}

/// The title a conversation takes from its first user message.
pub fn title_from(content: &str) -> String {
    content.chars().take(TITLE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(role: Role, content: &str) -> Turn {
        Turn {
            role,
            content: content.to_owned(),
        }
    }

    fn contents(turns: &[Turn]) -> Vec<&str> {
        turns.iter().map(|t| t.content.as_str()).collect()
    }

    #[test]
    fn window_table() {
        use Role::*;
        let five = [
            t(User, "a"),
            t(Assistant, "bb"),
            t(User, "ccc"),
            t(Assistant, "dddd"),
            t(User, "eeeee"),
        ];
        // (name, turns, max_history, budget, expected window)
        type Case<'a> = (&'a str, &'a [Turn], usize, usize, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "all fit",
                &five,
                50,
                6000,
                &["a", "bb", "ccc", "dddd", "eeeee"],
            ),
            ("count cap keeps newest", &five, 2, 6000, &["dddd", "eeeee"]),
            ("budget drops oldest", &five, 50, 9, &["dddd", "eeeee"]),
            (
                "budget exactly met",
                &five,
                50,
                12,
                &["ccc", "dddd", "eeeee"],
            ),
            ("newest kept alone over budget", &five, 50, 1, &["eeeee"]),
            ("empty", &[], 50, 10, &[]),
        ];
        for (name, turns, max, budget, want) in cases {
            assert_eq!(
                contents(history_window(turns, *max, *budget)),
                *want,
                "{name}"
            );
        }
    }

    #[test]
    fn budget_counts_characters_not_bytes() {
        let turns = [t(Role::User, "ééé"), t(Role::User, "😀😀")];
        // 5 characters (but 14 bytes) fit a budget of 5.
        assert_eq!(history_window(&turns, 50, 5).len(), 2);
        assert_eq!(history_window(&turns, 50, 4).len(), 1);
    }

    #[test]
    fn prompt_goes_to_first_user_turn_of_the_window_only() {
        let window = [
            t(Role::Assistant, "earlier answer"),
            t(Role::User, "q1"),
            t(Role::User, "q2"),
        ];
        for (thinking, prompt) in [(false, SYS_DEFAULT), (true, SYS_THINK)] {
            let out = with_system_prompt(&window, thinking);
            assert_eq!(out[0].content, "earlier answer");
            assert_eq!(out[1].content, format!("{prompt}\n\nq1"));
            assert_eq!(out[2].content, "q2");
        }
        assert!(SYS_THINK.ends_with("after the closing tag."));
        assert!(SYS_DEFAULT.ends_with("answer directly and concisely."));
    }

    #[test]
    fn title_cuts_80_characters_of_multibyte_text() {
        let text = "नमस्ते🙂".repeat(30);
        let title = title_from(&text);
        assert_eq!(title.chars().count(), 80);
        assert!(text.starts_with(&title));
        assert_eq!(title_from("hi there"), "hi there");
    }
}
