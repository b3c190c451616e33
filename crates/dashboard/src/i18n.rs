//! The dashboard's words and formats: one catalogue per language (every
//! [`Msg`] has its text in each, checked by the compiler), Japanese by
//! default (`[dashboard] language`), and the number, date and money formats
//! of each language (件, 人, ¥, 年月日).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Ja,
    En,
}

impl Lang {
    /// `ja` or `en` (`[dashboard] language`).
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "ja" => Some(Lang::Ja),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    pub fn t(self, msg: Msg) -> &'static str {
        match self {
            Lang::Ja => ja(msg),
            Lang::En => en(msg),
        }
    }

    /// A count of things: `1,234件` / `1,234`.
    pub fn items(self, n: u64) -> String {
        match self {
            Lang::Ja => format!("{}件", grouped(n)),
            Lang::En => grouped(n),
        }
    }

    /// A count of people: `1,234人` / `1,234`.
    pub fn people(self, n: u64) -> String {
        match self {
            Lang::Ja => format!("{}人", grouped(n)),
            Lang::En => grouped(n),
        }
    }

    /// Money in yen: `¥1,234` (both languages).
    pub fn yen(self, n: i64) -> String {
        let sign = if n < 0 { "-" } else { "" };
        format!("{sign}¥{}", grouped(n.unsigned_abs()))
    }

    /// A share as a percentage with one decimal: `12.3%`.
    pub fn percent(self, part: u64, whole: u64) -> String {
        if whole == 0 {
            return "–".to_string();
        }
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }

    /// A date, short: `12月6日` / `12-06`.
    pub fn day(self, date: chrono::NaiveDate) -> String {
        match self {
            Lang::Ja => date.format("%-m月%-d日").to_string(),
            Lang::En => date.format("%m-%d").to_string(),
        }
    }

    /// A decision of a dry run (`send`, `skip`, `defer`; the code itself when unknown).
    pub fn decision(self, decision: &str) -> String {
        let msg = match decision {
            "send" => Msg::DecisionSend,
            "skip" => Msg::DecisionSkip,
            "defer" => Msg::DecisionDefer,
            other => return other.to_string(),
        };
        self.t(msg).to_string()
    }

    /// An instant in the configured timezone: `2026年12月6日 09:13` / `2026-12-06 09:13`.
    pub fn datetime(self, at: DateTime<Utc>, tz: Tz) -> String {
        let local = at.with_timezone(&tz);
        match self {
            Lang::Ja => local.format("%Y年%-m月%-d日 %H:%M").to_string(),
            Lang::En => local.format("%Y-%m-%d %H:%M").to_string(),
        }
    }

    pub fn role(self, role: renkei_store::OperatorRole) -> &'static str {
        use renkei_store::OperatorRole::*;
        self.t(match role {
            Viewer => Msg::RoleViewer,
            Editor => Msg::RoleEditor,
            Admin => Msg::RoleAdmin,
        })
    }

    /// A delivery state's label (the code itself when unknown).
    pub fn delivery_status(self, status: &str) -> String {
        let msg = match status {
            "sent" => Msg::Sent,
            "pending" => Msg::Pending,
            "requested" => Msg::Requested,
            "skipped" => Msg::Skipped,
            "failed" => Msg::Failed,
            other => return other.to_string(),
        };
        self.t(msg).to_string()
    }

    /// An account-link outcome's label (the code itself when unknown).
    pub fn outcome(self, outcome: &str) -> String {
        let msg = match outcome {
            "ok" => Msg::OutcomeOk,
            "failed" => Msg::OutcomeFailed,
            "expired" => Msg::OutcomeExpired,
            "open" => Msg::OutcomeOpen,
            "conflict" => Msg::OutcomeConflict,
            other => return other.to_string(),
        };
        self.t(msg).to_string()
    }

    /// An audit action's label (the action code itself when unknown).
    pub fn action(self, action: &str) -> String {
        let msg = match action {
            "sign_in" => Msg::ActionSignIn,
            "sign_out" => Msg::ActionSignOut,
            "pause" => Msg::ActionPause,
            "resume" => Msg::ActionResume,
            "operator_add" => Msg::ActionOperatorAdd,
            "operator_remove" => Msg::ActionOperatorRemove,
            "operator_role" => Msg::ActionOperatorRole,
            "preview" => Msg::ActionPreview,
            "dry_run" => Msg::ActionDryRun,
            other => return other.to_string(),
        };
        self.t(msg).to_string()
    }
}

/// `1234567` → `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Every text the dashboard shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    Product,
    SignIn,
    SignOut,
    SignedInAs,
    Name,
    Password,
    WrongPassword,
    Overview,
    Campaigns,
    Operators,
    Friends,
    Blocked,
    Linked,
    LinkRate,
    DeliveriesPending,
    DeliveriesFailed,
    Replies,
    ReplyRule,
    ReplyAnswer,
    ReplyOutcome,
    NoReplies,
    SystemStatus,
    Database,
    Line,
    StatusOk,
    StatusError,
    LineConfigured,
    LineNotConfigured,
    QuotaUnknown,
    Campaign,
    Id,
    Trigger,
    State,
    Active,
    Paused,
    Pause,
    Resume,
    Sent,
    Pending,
    Failed,
    Skipped,
    SkippedByReason,
    Reason,
    Count,
    Holdout,
    Clicked,
    ClickedUsers,
    Converted,
    ConversionValue,
    Lift,
    Eligible,
    LiftInterval,
    QuotaGuard,
    GuardOff,
    GuardOpen,
    GuardHolding,
    WhyQuota,
    Steps,
    Step,
    Variants,
    Variant,
    Users,
    Exited,
    LineNumbers,
    LineDelivered,
    LineImpressions,
    LineClicks,
    NotYet,
    TriggerSegment,
    TriggerEvent,
    TriggerSchedule,
    Role,
    RoleViewer,
    RoleEditor,
    RoleAdmin,
    AddOperator,
    PasswordOptional,
    Add,
    Remove,
    ChangeRole,
    Updated,
    AuditLog,
    When,
    Who,
    What,
    Target,
    Nothing,
    GeneratedPassword,
    Done,
    ActionSignIn,
    ActionSignOut,
    ActionPause,
    ActionResume,
    ActionOperatorAdd,
    ActionOperatorRemove,
    ActionOperatorRole,
    ErrorTitle,
    ErrorForbidden,
    ErrorCsrf,
    ErrorBadForm,
    ErrorNotFound,
    ErrorUnavailable,
    ErrorTooMany,
    ErrorExists,
    ErrorNoSuchOperator,
    ErrorInvalidName,
    ErrorWeakPassword,
    Back,
    Segments,
    Segment,
    Size,
    Definition,
    SegmentMembers,
    NextPage,
    Members,
    LookupHint,
    Search,
    NoSuchMember,
    MemberId,
    LineUserId,
    LinkMethod,
    LinkedAt,
    NotLinked,
    Friendship,
    Following,
    BlockedNow,
    NeverFollowed,
    Since,
    Attributes,
    CurrentSegments,
    UpdatedAt,
    Deliveries,
    Waiting,
    NextDue,
    Why,
    WhyPaused,
    WhyLater,
    WhyQuietHours,
    WhyDue,
    RecentFailures,
    Attempts,
    LineMessage,
    FollowingAssumed,
    Links,
    ByMethod,
    Nonces,
    Outcome,
    OutcomeOk,
    OutcomeFailed,
    OutcomeExpired,
    OutcomeOpen,
    OutcomeConflict,
    Total,
    RecentEvents,
    EventType,
    Properties,
    Messages,
    Requested,
    QuotaUsed,
    Unlimited,
    AsOf,
    Trend30,
    Date,
    Follows,
    Unfollows,
    NoData,
    SizeOverTime,
    Entered,
    Left,
    NoncesIssued,
    LinkTokensIssued,
    LinksMade,
    Unlinks,
    SendsPerDay,
    Preview,
    PreviewAt,
    RunPreview,
    PreviewNote,
    DryRun,
    RunDryRun,
    DryRunNote,
    MeasuredAsOf,
    Measuring,
    Decision,
    DecisionSend,
    DecisionSkip,
    DecisionDefer,
    Detail,
    EditorsOnly,
    FirstRows,
    ActionPreview,
    ActionDryRun,
}

fn ja(msg: Msg) -> &'static str {
    use Msg::*;
    match msg {
        Product => "renkei ダッシュボード",
        SignIn => "サインイン",
        SignOut => "サインアウト",
        SignedInAs => "サインイン中",
        Name => "名前",
        Password => "パスワード",
        WrongPassword => "名前またはパスワードが違います。",
        Overview => "概要",
        Campaigns => "キャンペーン",
        Operators => "オペレーター",
        Friends => "友だち",
        Blocked => "ブロック",
        Linked => "ID連携済み",
        LinkRate => "ID連携率(友だちのうち)",
        DeliveriesPending => "配信待ち",
        DeliveriesFailed => "配信失敗",
        Replies => "自動返信（30日）",
        ReplyRule => "ルール",
        ReplyAnswer => "応答",
        ReplyOutcome => "結果",
        NoReplies => "30日以内の自動返信はありません。",
        SystemStatus => "システムの状態",
        Database => "データベース",
        Line => "LINE",
        StatusOk => "正常",
        StatusError => "エラー",
        LineConfigured => "チャネルアクセストークン設定済み",
        LineNotConfigured => "チャネルアクセストークン未設定(配信されません)",
        QuotaUnknown => "LINEの今月の配信数と上限はまだ読み込まれていません(配信ロールが読み込みます)。",
        Campaign => "キャンペーン",
        Id => "ID",
        Trigger => "トリガー",
        State => "状態",
        Active => "配信中",
        Paused => "一時停止中",
        Pause => "一時停止",
        Resume => "再開",
        Sent => "送信済み",
        Pending => "送信待ち",
        Failed => "失敗",
        Skipped => "スキップ",
        SkippedByReason => "スキップの理由",
        Reason => "理由",
        Count => "件数",
        Holdout => "ホールドアウト",
        Clicked => "クリック",
        ClickedUsers => "クリックした人",
        Converted => "コンバージョン",
        ConversionValue => "コンバージョン金額",
        Lift => "リフト",
        Eligible => "対象(配信対象+ホールドアウト)",
        LiftInterval => "95%信頼区間",
        QuotaGuard => "配信数ガード",
        GuardOff => "オフ(LINEの上限で拒否されるまで送信)",
        GuardOpen => "送信中(上限まで余裕あり)",
        GuardHolding => "送信を停止中(今月の上限に達しました。配信は待機し、失われません)",
        WhyQuota => "配信数ガードで停止中(今月の上限)",
        Steps => "ステップ",
        Step => "ステップ",
        Variants => "バリアント",
        Variant => "バリアント",
        Users => "人数",
        Exited => "離脱",
        LineNumbers => "LINEの統計",
        LineDelivered => "配信",
        LineImpressions => "開封(ユニーク)",
        LineClicks => "クリック(ユニーク)",
        NotYet => "未取得(20未満を含む)",
        TriggerSegment => "セグメント参加",
        TriggerEvent => "イベント",
        TriggerSchedule => "スケジュール",
        Role => "権限",
        RoleViewer => "閲覧者",
        RoleEditor => "編集者",
        RoleAdmin => "管理者",
        AddOperator => "オペレーターを追加",
        PasswordOptional => "パスワード(空欄なら自動生成)",
        Add => "追加",
        Remove => "削除",
        ChangeRole => "権限を変更",
        Updated => "更新日時",
        AuditLog => "操作履歴",
        When => "日時",
        Who => "誰が",
        What => "操作",
        Target => "対象",
        Nothing => "なし",
        GeneratedPassword => "自動生成したパスワードです。この画面でしか表示されません:",
        Done => "完了しました。",
        ActionSignIn => "サインイン",
        ActionSignOut => "サインアウト",
        ActionPause => "キャンペーンを一時停止",
        ActionResume => "キャンペーンを再開",
        ActionOperatorAdd => "オペレーターを追加",
        ActionOperatorRemove => "オペレーターを削除",
        ActionOperatorRole => "権限を変更",
        ErrorTitle => "エラー",
        ErrorForbidden => "この操作の権限がありません。",
        ErrorCsrf => "フォームの確認に失敗しました。ページを開き直してからもう一度お試しください。",
        ErrorBadForm => "フォームの内容を読み取れませんでした。",
        ErrorNotFound => "見つかりません。",
        ErrorUnavailable => "データベースに接続できません。しばらくしてからもう一度お試しください。",
        ErrorTooMany => "サインインの失敗が続いたため、しばらくサインインできません。時間をおいてお試しください。",
        ErrorExists => "その名前のオペレーターはすでにいます。",
        ErrorNoSuchOperator => "そのオペレーターはいません。",
        ErrorInvalidName => "名前は1〜64文字の英数字と . _ - @ で指定してください。",
        ErrorWeakPassword => "パスワードは10文字以上、1024文字以下にしてください。",
        Back => "戻る",
        Segments => "セグメント",
        Segment => "セグメント",
        Size => "人数",
        Definition => "定義",
        SegmentMembers => "メンバー",
        NextPage => "次へ",
        Members => "会員検索",
        LookupHint => "会員IDまたはLINEユーザーID(U…)",
        Search => "検索",
        NoSuchMember => "該当する会員・LINEユーザーは見つかりませんでした。",
        MemberId => "会員ID",
        LineUserId => "LINEユーザーID",
        LinkMethod => "連携方法",
        LinkedAt => "連携日時",
        NotLinked => "未連携",
        Friendship => "友だち状態",
        Following => "友だち",
        BlockedNow => "ブロック中",
        NeverFollowed => "友だち追加なし",
        Since => "以降",
        Attributes => "属性",
        CurrentSegments => "現在のセグメント",
        UpdatedAt => "最終更新",
        Deliveries => "配信状況",
        Waiting => "待機中の配信",
        NextDue => "次の予定",
        Why => "理由",
        WhyPaused => "キャンペーン一時停止中",
        WhyLater => "予定時刻待ち(遅延・ステップなど)",
        WhyQuietHours => "配信停止時間帯(静音時間)の終了待ち",
        WhyDue => "送信待ち",
        RecentFailures => "最近の失敗",
        Attempts => "試行回数",
        LineMessage => "LINEの応答",
        FollowingAssumed => "友だち(連携済み・ブロックの記録なし)",
        Links => "ID連携",
        ByMethod => "連携方法別",
        Nonces => "連携の試み(過去30日、ノンス発行数)",
        Outcome => "結果",
        OutcomeOk => "成功",
        OutcomeFailed => "失敗(LINEが失敗を通知)",
        OutcomeExpired => "期限切れ(未使用)",
        OutcomeOpen => "進行中(未使用)",
        OutcomeConflict => "競合(別の会員と連携済み)",
        Total => "合計",
        RecentEvents => "最近のイベント",
        EventType => "種類",
        Properties => "プロパティ",
        Messages => "メッセージ(送信・スキップ)",
        Requested => "送信中",
        QuotaUsed => "今月の配信数(LINEの上限に対して)",
        Unlimited => "上限なし",
        AsOf => "時点",
        Trend30 => "過去30日の推移",
        Date => "日付",
        Follows => "友だち追加",
        Unfollows => "ブロックされた",
        NoData => "データはまだありません",
        SizeOverTime => "人数の推移(過去30日)",
        Entered => "入った",
        Left => "出た",
        NoncesIssued => "ノンス発行",
        LinkTokensIssued => "連携トークン発行",
        LinksMade => "連携",
        Unlinks => "連携解除",
        SendsPerDay => "日別の送信数(過去30日、LINEが受け付けた配信)",
        Preview => "プレビュー",
        PreviewAt => "日時",
        RunPreview => "この日時でプレビュー",
        PreviewNote => "保存されたデータからこの日時の対象者を計算します(何も書き込みません)。",
        DryRun => "ドライラン",
        RunDryRun => "この日時でドライラン",
        DryRunNote => "この日時に配信したら誰に何が届くかを、ポリシーの判定つきで表示します(何も送信・保存しません)。",
        MeasuredAsOf => "コンバージョン・リフト・バリアント・ステップは次の時点の集計です:",
        Measuring => {
            "コンバージョン・リフト・バリアント・ステップを集計中です。しばらくしてから再読み込みしてください。"
        }
        Decision => "判定",
        DecisionSend => "送信",
        DecisionSkip => "スキップ",
        DecisionDefer => "延期",
        Detail => "詳細",
        EditorsOnly => "プレビューとドライランは編集者と管理者だけが実行できます。",
        FirstRows => "先頭50件を表示",
        ActionPreview => "プレビュー",
        ActionDryRun => "ドライラン",
    }
}

fn en(msg: Msg) -> &'static str {
    use Msg::*;
    match msg {
        Product => "renkei dashboard",
        SignIn => "Sign in",
        SignOut => "Sign out",
        SignedInAs => "Signed in as",
        Name => "Name",
        Password => "Password",
        WrongPassword => "Wrong name or password.",
        Overview => "Overview",
        Campaigns => "Campaigns",
        Operators => "Operators",
        Friends => "Friends",
        Blocked => "Blocked",
        Linked => "Linked (ID link)",
        LinkRate => "ID link rate (of friends)",
        DeliveriesPending => "Deliveries waiting",
        DeliveriesFailed => "Deliveries failed",
        Replies => "Replies (30 days)",
        ReplyRule => "Rule",
        ReplyAnswer => "Answer",
        ReplyOutcome => "Outcome",
        NoReplies => "No replies in the last 30 days.",
        SystemStatus => "System status",
        Database => "Database",
        Line => "LINE",
        StatusOk => "OK",
        StatusError => "Error",
        LineConfigured => "channel access token set",
        LineNotConfigured => "no channel access token (nothing is sent)",
        QuotaUnknown => {
            "LINE's count of this month's messages and its limit have not been read yet (the dispatcher reads them)."
        }
        Campaign => "Campaign",
        Id => "ID",
        Trigger => "Trigger",
        State => "State",
        Active => "active",
        Paused => "paused",
        Pause => "Pause",
        Resume => "Resume",
        Sent => "Sent",
        Pending => "Pending",
        Failed => "Failed",
        Skipped => "Skipped",
        SkippedByReason => "Skipped by reason",
        Reason => "Reason",
        Count => "Count",
        Holdout => "Holdout",
        Clicked => "Clicks",
        ClickedUsers => "Users who clicked",
        Converted => "Converted",
        ConversionValue => "Conversion value",
        Lift => "Lift",
        Eligible => "Eligible (treated + holdout)",
        LiftInterval => "95% interval",
        QuotaGuard => "Quota guard",
        GuardOff => "off (sends until LINE refuses)",
        GuardOpen => "sending (room left this month)",
        GuardHolding => "holding sending (this month's limit is reached; deliveries wait, none are lost)",
        WhyQuota => "held by the quota guard (monthly limit)",
        Steps => "Steps",
        Step => "Step",
        Variants => "Variants",
        Variant => "Variant",
        Users => "Users",
        Exited => "Exited",
        LineNumbers => "LINE's statistics",
        LineDelivered => "Delivered",
        LineImpressions => "Unique impressions",
        LineClicks => "Unique clicks",
        NotYet => "not fetched (or fewer than 20)",
        TriggerSegment => "segment entered",
        TriggerEvent => "event",
        TriggerSchedule => "schedule",
        Role => "Role",
        RoleViewer => "viewer",
        RoleEditor => "editor",
        RoleAdmin => "admin",
        AddOperator => "Add an operator",
        PasswordOptional => "Password (empty: generated)",
        Add => "Add",
        Remove => "Remove",
        ChangeRole => "Change role",
        Updated => "Updated",
        AuditLog => "Audit log",
        When => "When",
        Who => "Who",
        What => "What",
        Target => "Target",
        Nothing => "none",
        GeneratedPassword => "The generated password, shown on this page only:",
        Done => "Done.",
        ActionSignIn => "signed in",
        ActionSignOut => "signed out",
        ActionPause => "paused a campaign",
        ActionResume => "resumed a campaign",
        ActionOperatorAdd => "added an operator",
        ActionOperatorRemove => "removed an operator",
        ActionOperatorRole => "changed a role",
        ErrorTitle => "Error",
        ErrorForbidden => "You may not do this.",
        ErrorCsrf => "The form could not be verified. Open the page again and retry.",
        ErrorBadForm => "The form could not be read.",
        ErrorNotFound => "Not found.",
        ErrorUnavailable => "The database cannot be reached. Try again in a moment.",
        ErrorTooMany => "Too many failed sign-ins: signing in is refused for a while. Try again later.",
        ErrorExists => "An operator with that name exists already.",
        ErrorNoSuchOperator => "There is no such operator.",
        ErrorInvalidName => "A name is 1 to 64 letters, digits and . _ - @.",
        ErrorWeakPassword => "A password has 10 to 1024 characters.",
        Back => "Back",
        Segments => "Segments",
        Segment => "Segment",
        Size => "Size",
        Definition => "Definition",
        SegmentMembers => "Members",
        NextPage => "Next",
        Members => "Member look-up",
        LookupHint => "Member ID or LINE user ID (U…)",
        Search => "Search",
        NoSuchMember => "No such member or LINE user.",
        MemberId => "Member ID",
        LineUserId => "LINE user ID",
        LinkMethod => "Link method",
        LinkedAt => "Linked at",
        NotLinked => "not linked",
        Friendship => "Friendship",
        Following => "following",
        BlockedNow => "blocked",
        NeverFollowed => "never followed",
        Since => "since",
        Attributes => "Attributes",
        CurrentSegments => "Current segments",
        UpdatedAt => "Updated",
        Deliveries => "Deliveries",
        Waiting => "Waiting deliveries",
        NextDue => "Next due",
        Why => "Why",
        WhyPaused => "campaign paused",
        WhyLater => "due later (a delay, a step, …)",
        WhyQuietHours => "waits for quiet hours to end",
        WhyDue => "due now",
        RecentFailures => "Recent failures",
        Attempts => "Attempts",
        LineMessage => "LINE's answer",
        FollowingAssumed => "following (linked, no unfollow seen)",
        Links => "ID link",
        ByMethod => "By method",
        Nonces => "Link attempts (last 30 days, nonces issued)",
        Outcome => "Outcome",
        OutcomeOk => "linked",
        OutcomeFailed => "failed (LINE reported)",
        OutcomeExpired => "expired unused",
        OutcomeOpen => "open (not used yet)",
        OutcomeConflict => "conflict (linked elsewhere)",
        Total => "Total",
        RecentEvents => "Recent events",
        EventType => "Type",
        Properties => "Properties",
        Messages => "Messages (sent or skipped)",
        Requested => "in flight",
        QuotaUsed => "Messages this month (against LINE's limit)",
        Unlimited => "no limit",
        AsOf => "as of",
        Trend30 => "The last 30 days",
        Date => "Date",
        Follows => "Follows",
        Unfollows => "Unfollows",
        NoData => "No data yet",
        SizeOverTime => "Size over the last 30 days",
        Entered => "Entered",
        Left => "Left",
        NoncesIssued => "Nonces issued",
        LinkTokensIssued => "Link tokens issued",
        LinksMade => "Links",
        Unlinks => "Unlinks",
        SendsPerDay => "Sends per day (last 30 days, deliveries LINE accepted)",
        Preview => "Preview",
        PreviewAt => "At",
        RunPreview => "Preview at this time",
        PreviewNote => "Computes the members at that time from the stored data (nothing is written).",
        DryRun => "Dry run",
        RunDryRun => "Dry run at this time",
        DryRunNote => "Shows who would get what at that time, with each policy decision (nothing is sent or stored).",
        MeasuredAsOf => "Conversions, lift, variants and steps are as of",
        Measuring => "Conversions, lift, variants and steps are being measured; reload in a while.",
        Decision => "Decision",
        DecisionSend => "send",
        DecisionSkip => "skip",
        DecisionDefer => "defer",
        Detail => "Detail",
        EditorsOnly => "Previews and dry runs are for editors and admins.",
        FirstRows => "The first 50 shown",
        ActionPreview => "preview",
        ActionDryRun => "dry run",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_formats() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-06T00:13:00Z").map(|t| t.to_utc());
        let at = at.unwrap_or_default();
        assert_eq!(Lang::Ja.datetime(at, chrono_tz::Asia::Tokyo), "2026年12月6日 09:13");
        assert_eq!(Lang::En.datetime(at, chrono_tz::Asia::Tokyo), "2026-12-06 09:13");
        assert_eq!(Lang::Ja.items(1_234_567), "1,234,567件");
        assert_eq!(Lang::Ja.people(12), "12人");
        assert_eq!(Lang::Ja.yen(-1_380_000), "-¥1,380,000");
        assert_eq!(Lang::En.percent(1, 3), "33.3%");
        assert_eq!(Lang::En.percent(1, 0), "–");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(100), "100");
        assert_eq!(grouped(1000), "1,000");
    }
}
