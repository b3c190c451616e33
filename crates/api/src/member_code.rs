//! `GET /member-code/{token}`: the scannable code (QR) of a member id, as a
//! PNG, for the digital member card a reply rule sends (Flex cannot draw a
//! code, so the card's image points here). Public: LINE fetches it.
//!
//! The token (see `renkei_campaigns::link::MemberCode`) is sealed with
//! `server.link_keys` and carries its expiry: a tampered, truncated or
//! expired token, or one of another purpose (a tracked link), is 404.

use crate::error::ApiError;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use qrcode::{Color, EcLevel, QrCode};
use renkei_campaigns::CampaignSet;
use renkei_core::Clock;
use std::sync::Arc;

/// Pixels per QR module, and the quiet zone around the code in modules.
const MODULE_PX: usize = 8;
const QUIET_ZONE: usize = 4;

#[derive(Clone)]
pub struct MemberCodeApi {
    /// Holds the link keys (`CampaignSet::link_keys`).
    pub campaigns: Arc<CampaignSet>,
    pub clock: Arc<dyn Clock>,
}

pub fn router(state: MemberCodeApi) -> Router {
    Router::new().route("/member-code/{token}", get(member_code)).with_state(state)
}

async fn member_code(State(api): State<MemberCodeApi>, Path(token): Path<String>) -> Response {
    let now = api.clock.now().timestamp();
    let Some(code) = api.campaigns.link_keys().and_then(|keys| keys.open_member_code(&token, now).ok()) else {
        return ApiError::not_found("no such member code (tampered, expired or unknown)").into_response();
    };
    match qr_png(&code.member_id) {
        Ok(png) => {
            let max_age = (code.expires_at - now).max(0);
            let cache = format!("private, max-age={max_age}");
            (StatusCode::OK, [(header::CONTENT_TYPE, "image/png".to_string()), (header::CACHE_CONTROL, cache)], png)
                .into_response()
        }
        Err(error) => {
            tracing::error!(error = %error, "member code could not be drawn");
            ApiError::new(crate::error::ErrorCode::Unavailable, "the member code could not be drawn").into_response()
        }
    }
}

/// A QR code of `text` (error correction M), black on white, as an 8-bit
/// greyscale PNG.
pub fn qr_png(text: &str) -> Result<Vec<u8>, String> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M).map_err(|e| e.to_string())?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * MODULE_PX;
    let mut pixels = vec![255u8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (x, y) = ((index % modules + QUIET_ZONE) * MODULE_PX, (index / modules + QUIET_ZONE) * MODULE_PX);
        for row in y..y + MODULE_PX {
            pixels[row * side + x..row * side + x + MODULE_PX].fill(0);
        }
    }
    let side = u32::try_from(side).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Decodes the PNG back with a QR reader: what a shop's scanner reads.
    fn decode(png_bytes: &[u8]) -> String {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buffer).unwrap();
        let (width, height) = (info.width as usize, info.height as usize);
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| buffer[y * width + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1);
        grids[0].decode().unwrap().1
    }

    #[test]
    fn the_code_reads_back_as_the_member_id() {
        for id in ["M00001", "member-1234567890", "会員-42"] {
            assert_eq!(decode(&qr_png(id).unwrap()), id);
        }
    }
}
